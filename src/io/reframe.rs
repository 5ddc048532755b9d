//! Region of interest and rescaling between the source and the network: `--roi` keeps the part
//! of the field that matters, `--scale` brings nuclei to the pixel size the model was trained
//! for. Works on any [`FrameSource`]; index tables are built once per frame size, so the steady
//! state allocates nothing.

use crate::io::source::{FrameBuf, FrameSource, Next, SourceError};
use anyhow::{bail, Context, Result};
use std::time::Duration;

/// A rectangle `x,y,w,h` in source pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Roi {
    /// Left edge.
    pub x: usize,
    /// Top edge.
    pub y: usize,
    /// Width.
    pub w: usize,
    /// Height.
    pub h: usize,
}

impl std::str::FromStr for Roi {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Roi> {
        let v: Vec<usize> = s
            .split(',')
            .map(|p| p.trim().parse::<usize>())
            .collect::<Result<_, _>>()
            .with_context(|| {
                format!("bad --roi {s:?}: expected x,y,w,h in pixels, e.g. 0,0,512,512")
            })?;
        let [x, y, w, h] = v[..] else {
            bail!(
                "bad --roi {s:?}: expected four numbers x,y,w,h, got {}",
                v.len()
            );
        };
        if w == 0 || h == 0 {
            bail!("bad --roi {s:?}: width and height must be at least 1");
        }
        Ok(Roi { x, y, w, h })
    }
}

/// Per-axis sampling table: output index → source span and weights.
#[derive(Clone, Debug, Default)]
struct Axis {
    /// For each output index, (first source index, count).
    span: Vec<(usize, usize)>,
    /// Bilinear upsampling: (i0, i1, w1) per output index; empty when box-averaging.
    lerp: Vec<(usize, usize, f32)>,
}

impl Axis {
    /// Maps `n_in` source pixels starting at `off` onto `n_out` outputs.
    fn build(&mut self, off: usize, n_in: usize, n_out: usize) {
        self.span.clear();
        self.lerp.clear();
        let s = n_in as f64 / n_out as f64;
        if s >= 1.0 {
            // Downscaling (or 1:1): average the source pixels each output covers, so fine
            // texture does not alias into false edges.
            for o in 0..n_out {
                let a = ((o as f64 * s).floor() as usize).min(n_in - 1);
                let b = (((o + 1) as f64 * s).ceil() as usize).clamp(a + 1, n_in);
                self.span.push((off + a, b - a));
            }
        } else {
            for o in 0..n_out {
                let c = ((o as f64 + 0.5) * s - 0.5).max(0.0);
                let i0 = (c.floor() as usize).min(n_in - 1);
                let i1 = (i0 + 1).min(n_in - 1);
                self.lerp.push((off + i0, off + i1, (c - i0 as f64) as f32));
            }
        }
    }
}

/// Crop and rescale settings, validated against each frame size.
#[derive(Clone, Debug)]
pub struct Reframe {
    roi: Option<Roi>,
    scale: f32,
    size: (usize, usize),
    out_size: (usize, usize),
    xs: Axis,
    ys: Axis,
    row: Vec<f32>,
}

impl Reframe {
    /// `scale` multiplies the side lengths (0.5 halves them); it must be in (0, 8].
    pub fn new(roi: Option<Roi>, scale: f32) -> Result<Reframe> {
        if !(scale > 0.0 && scale <= 8.0) {
            bail!("--scale {scale}: must be more than 0 and at most 8 (1 = unchanged)");
        }
        Ok(Reframe {
            roi,
            scale,
            size: (0, 0),
            out_size: (0, 0),
            xs: Axis::default(),
            ys: Axis::default(),
            row: Vec::new(),
        })
    }

    /// True when frames pass through unchanged.
    pub fn is_identity(&self) -> bool {
        self.roi.is_none() && self.scale == 1.0
    }

    fn prepare(&mut self, width: usize, height: usize) -> Result<(), SourceError> {
        if self.size == (width, height) {
            return Ok(());
        }
        let roi = self.roi.unwrap_or(Roi {
            x: 0,
            y: 0,
            w: width,
            h: height,
        });
        if roi.x + roi.w > width || roi.y + roi.h > height {
            return Err(SourceError::Fatal(anyhow::anyhow!(
                "--roi {},{},{},{} reaches outside the {width}x{height} frame",
                roi.x,
                roi.y,
                roi.w,
                roi.h
            )));
        }
        let ow = ((roi.w as f32 * self.scale).round() as usize).max(1);
        let oh = ((roi.h as f32 * self.scale).round() as usize).max(1);
        self.xs.build(roi.x, roi.w, ow);
        self.ys.build(roi.y, roi.h, oh);
        self.row.resize(ow, 0.0);
        self.size = (width, height);
        self.out_size = (ow, oh);
        Ok(())
    }

    /// Writes the cropped, rescaled `src` into `out`.
    pub fn apply(&mut self, src: &FrameBuf, out: &mut FrameBuf) -> Result<(), SourceError> {
        self.prepare(src.width, src.height)?;
        let (ow, oh) = self.out_size;
        out.resize(ow, oh);
        out.index = src.index;
        out.captured = src.captured;
        let w = src.width;
        for oy in 0..oh {
            // Horizontal pass for the source rows this output row needs, then the vertical blend.
            let dst = &mut out.data[oy * ow..(oy + 1) * ow];
            dst.fill(0.0);
            let rows: (usize, usize, f32, f32) = if self.ys.lerp.is_empty() {
                let (a, n) = self.ys.span[oy];
                (a, n, 1.0 / n as f32, 0.0)
            } else {
                let (i0, i1, t) = self.ys.lerp[oy];
                (i0, i1, 1.0 - t, t)
            };
            let mut add_row = |sy: usize, weight: f32, row: &mut [f32]| {
                let line = &src.data[sy * w..(sy + 1) * w];
                horizontal(&self.xs, line, row);
                dst.iter_mut()
                    .zip(row.iter())
                    .for_each(|(d, r)| *d += weight * r);
            };
            let mut row = std::mem::take(&mut self.row);
            if self.ys.lerp.is_empty() {
                for sy in rows.0..rows.0 + rows.1 {
                    add_row(sy, rows.2, &mut row);
                }
            } else {
                add_row(rows.0, rows.2, &mut row);
                if rows.3 != 0.0 {
                    add_row(rows.1, rows.3, &mut row);
                }
            }
            self.row = row;
        }
        Ok(())
    }
}

fn horizontal(xs: &Axis, line: &[f32], out: &mut [f32]) {
    if xs.lerp.is_empty() {
        for (o, &(a, n)) in out.iter_mut().zip(&xs.span) {
            *o = line[a..a + n].iter().sum::<f32>() / n as f32;
        }
    } else {
        for (o, &(i0, i1, t)) in out.iter_mut().zip(&xs.lerp) {
            *o = line[i0] * (1.0 - t) + line[i1] * t;
        }
    }
}

/// A source whose frames pass through a [`Reframe`].
pub struct Reframed<S: FrameSource> {
    inner: S,
    reframe: Reframe,
    raw: FrameBuf,
}

impl<S: FrameSource> Reframed<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, reframe: Reframe) -> Reframed<S> {
        Reframed {
            inner,
            reframe,
            raw: FrameBuf::default(),
        }
    }
}

impl<S: FrameSource> FrameSource for Reframed<S> {
    fn next_into(&mut self, out: &mut FrameBuf, timeout: Duration) -> Result<Next, SourceError> {
        match self.inner.next_into(&mut self.raw, timeout)? {
            Next::End => Ok(Next::End),
            Next::Frame => {
                self.reframe.apply(&self.raw, out)?;
                Ok(Next::Frame)
            }
        }
    }

    fn is_live(&self) -> bool {
        self.inner.is_live()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(w: usize, h: usize) -> FrameBuf {
        FrameBuf {
            width: w,
            height: h,
            data: (0..w * h).map(|i| i as f32).collect(),
            index: 7,
            captured: None,
        }
    }

    #[test]
    fn roi_parses_and_names_bad_input() {
        assert_eq!(
            "1,2,30,40".parse::<Roi>().unwrap(),
            Roi {
                x: 1,
                y: 2,
                w: 30,
                h: 40
            }
        );
        assert!("1,2,3"
            .parse::<Roi>()
            .unwrap_err()
            .to_string()
            .contains("four"));
        assert!("a,2,3,4".parse::<Roi>().is_err());
        assert!("0,0,0,4".parse::<Roi>().is_err());
    }

    #[test]
    fn crop_is_exact_and_out_of_frame_roi_is_fatal() {
        let mut r = Reframe::new("1,1,2,2".parse().ok(), 1.0).unwrap();
        let mut out = FrameBuf::default();
        r.apply(&frame(4, 3), &mut out).unwrap();
        assert_eq!((out.width, out.height, out.index), (2, 2, 7));
        assert_eq!(out.data, vec![5.0, 6.0, 9.0, 10.0]);
        let mut r = Reframe::new("3,0,2,2".parse().ok(), 1.0).unwrap();
        assert!(matches!(
            r.apply(&frame(4, 3), &mut out),
            Err(SourceError::Fatal(_))
        ));
    }

    #[test]
    fn half_scale_averages_blocks_and_double_scale_interpolates() {
        let mut r = Reframe::new(None, 0.5).unwrap();
        let mut out = FrameBuf::default();
        r.apply(&frame(4, 2), &mut out).unwrap();
        assert_eq!((out.width, out.height), (2, 1));
        assert_eq!(
            out.data,
            vec![(0.0 + 1.0 + 4.0 + 5.0) / 4.0, (2.0 + 3.0 + 6.0 + 7.0) / 4.0]
        );
        let mut r = Reframe::new(None, 2.0).unwrap();
        r.apply(&frame(2, 1), &mut out).unwrap();
        assert_eq!((out.width, out.height), (4, 2));
        assert_eq!(&out.data[..4], &[0.0, 0.25, 0.75, 1.0]);
        // The mean of a constant frame survives any scale.
        let flat = FrameBuf {
            width: 37,
            height: 23,
            data: vec![3.0; 37 * 23],
            ..Default::default()
        };
        for s in [0.3, 0.77, 1.0, 1.6, 3.0] {
            let mut r = Reframe::new(None, s).unwrap();
            r.apply(&flat, &mut out).unwrap();
            assert!(
                out.data.iter().all(|&v| (v - 3.0).abs() < 1e-5),
                "scale {s}"
            );
        }
    }

    #[test]
    fn bad_scales_are_rejected() {
        for s in [0.0, -1.0, 9.0, f32::NAN] {
            assert!(Reframe::new(None, s).is_err(), "{s}");
        }
    }
}
