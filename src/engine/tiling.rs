//! Overlap-tile geometry (Ronneberger 2015): where tiles sit on a frame, which tile owns each
//! output pixel, and mirrored borders. Everything is precomputed per frame size so that gathering
//! and stitching a frame allocate nothing.

use anyhow::{bail, Result};

/// Tile placement along one axis.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AxisPlan {
    /// Frame length along this axis.
    pub len: usize,
    /// Tile side.
    pub tile: usize,
    /// First frame coordinate covered by each tile (may be negative: mirrored padding).
    pub starts: Vec<isize>,
    /// Frame coordinates `[a, b)` each tile writes to the output: the pixels in which it lies deepest.
    pub owned: Vec<(usize, usize)>,
    /// For tile `i` and offset `j`, the frame coordinate it reads: `src[i * tile + j]`.
    pub src: Vec<u32>,
}

/// Mirror index `i` into `[0, len)` without repeating the edge pixel (numpy `reflect`).
pub fn reflect(i: isize, len: usize) -> usize {
    if len == 1 {
        return 0;
    }
    let period = 2 * (len as isize - 1);
    let m = i.rem_euclid(period);
    (if m >= len as isize { period - m } else { m }) as usize
}

impl AxisPlan {
    /// Places tiles of side `tile` so that every coordinate lies at least `margin` inside some tile.
    pub fn new(len: usize, tile: usize, margin: usize) -> Result<AxisPlan> {
        if len == 0 {
            bail!("frame has a zero-length side");
        }
        if 2 * margin >= tile {
            bail!("margin {margin} leaves no tile interior: need 2 x margin < tile ({tile})");
        }
        let core = tile - 2 * margin;
        let n = len.div_ceil(core).max(1);
        let starts: Vec<isize> = if n == 1 {
            // Centre the single tile so both borders get the same mirrored context.
            vec![(len as isize - tile as isize).div_euclid(2)]
        } else {
            let first = -(margin as isize);
            let last = len as isize - tile as isize + margin as isize;
            (0..n)
                .map(|i| {
                    let num = (last - first) * i as isize;
                    let den = (n - 1) as isize;
                    first + (2 * num + den).div_euclid(2 * den)
                })
                .collect()
        };
        let depth = |s: isize, x: usize| -> isize {
            let x = x as isize;
            (x - s).min(s + tile as isize - 1 - x)
        };
        let mut owned = vec![(usize::MAX, 0usize); n];
        let mut owner = 0usize;
        for x in 0..len {
            // Owners only move forward along the axis because starts increase.
            while owner + 1 < n && depth(starts[owner + 1], x) > depth(starts[owner], x) {
                owner += 1;
            }
            owned[owner].0 = owned[owner].0.min(x);
            owned[owner].1 = x + 1;
        }
        // A tile that won no pixel owns an empty range.
        for o in owned.iter_mut().filter(|o| o.0 == usize::MAX) {
            *o = (0, 0);
        }
        let mut src = Vec::with_capacity(n * tile);
        for &s in &starts {
            src.extend((0..tile).map(|j| reflect(s + j as isize, len) as u32));
        }
        Ok(AxisPlan {
            len,
            tile,
            starts,
            owned,
            src,
        })
    }

    /// Number of tiles along this axis.
    pub fn count(&self) -> usize {
        self.starts.len()
    }

    /// Whether tile `i` lies wholly inside the frame (no mirrored pixels), so rows copy as slices.
    pub fn inside(&self, i: usize) -> bool {
        self.starts[i] >= 0 && self.starts[i] as usize + self.tile <= self.len
    }
}

/// Tile placement over a whole frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TileGrid {
    /// Frame width.
    pub width: usize,
    /// Frame height.
    pub height: usize,
    /// Tile side.
    pub tile: usize,
    /// Minimum context kept around every output pixel.
    pub margin: usize,
    /// Columns.
    pub xs: AxisPlan,
    /// Rows.
    pub ys: AxisPlan,
}

impl TileGrid {
    /// Plans tiles for a `width`x`height` frame.
    pub fn new(width: usize, height: usize, tile: usize, margin: usize) -> Result<TileGrid> {
        Ok(TileGrid {
            width,
            height,
            tile,
            margin,
            xs: AxisPlan::new(width, tile, margin)?,
            ys: AxisPlan::new(height, tile, margin)?,
        })
    }

    /// Total number of tiles.
    pub fn len(&self) -> usize {
        self.xs.count() * self.ys.count()
    }

    /// True when there are no tiles (never, for a valid frame).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// (column, row) of tile `k` in row-major order.
    pub fn tile_xy(&self, k: usize) -> (usize, usize) {
        (k % self.xs.count(), k / self.xs.count())
    }

    /// Copies tile `k` of `frame` (row-major, `width`x`height`) into `dst` (`tile`x`tile`),
    /// mirroring at the frame borders.
    pub fn gather(&self, frame: &[f32], k: usize, dst: &mut [f32]) {
        let (tx, ty) = self.tile_xy(k);
        let t = self.tile;
        let xsrc = &self.xs.src[tx * t..(tx + 1) * t];
        let ysrc = &self.ys.src[ty * t..(ty + 1) * t];
        let contiguous = self.xs.inside(tx);
        for (r, &sy) in ysrc.iter().enumerate() {
            let row = &frame[sy as usize * self.width..(sy as usize + 1) * self.width];
            let out = &mut dst[r * t..(r + 1) * t];
            if contiguous {
                let s = self.xs.starts[tx] as usize;
                out.copy_from_slice(&row[s..s + t]);
            } else {
                for (o, &sx) in out.iter_mut().zip(xsrc) {
                    *o = row[sx as usize];
                }
            }
        }
    }

    /// Visits the output rectangle owned by tile `k`: calls `f(frame_row, frame_x0, tile_row, tile_x0, len)`
    /// for each of its rows.
    pub fn for_owned_rows(&self, k: usize, mut f: impl FnMut(usize, usize, usize, usize, usize)) {
        let (tx, ty) = self.tile_xy(k);
        let (x0, x1) = self.xs.owned[tx];
        let (y0, y1) = self.ys.owned[ty];
        let sx = self.xs.starts[tx];
        let sy = self.ys.starts[ty];
        for y in y0..y1 {
            f(
                y,
                x0,
                (y as isize - sy) as usize,
                (x0 as isize - sx) as usize,
                x1 - x0,
            );
        }
    }

    /// Whether pixel (x, y) lies within 1 px of a boundary between two tiles' owned regions,
    /// where a seam would show if the margin were too small.
    pub fn is_seam(&self, x: usize, y: usize) -> bool {
        let near = |v: usize, axis: &AxisPlan| {
            axis.owned.iter().any(|&(a, b)| {
                (a > 0 && v + 1 >= a && v <= a) || (b < axis.len && v + 1 >= b && v <= b)
            })
        };
        near(x, &self.xs) || near(y, &self.ys)
    }

    /// Copies the owned part of tile `k`'s output `src` (`tile`x`tile`) into `frame`.
    pub fn scatter(&self, src: &[f32], k: usize, frame: &mut [f32]) {
        let (t, w) = (self.tile, self.width);
        self.for_owned_rows(k, |fy, fx, ty, tx, n| {
            frame[fy * w + fx..fy * w + fx + n].copy_from_slice(&src[ty * t + tx..ty * t + tx + n]);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reflect_matches_numpy() {
        let got: Vec<usize> = (-4..8).map(|i| reflect(i, 4)).collect();
        assert_eq!(got, vec![2, 3, 2, 1, 0, 1, 2, 3, 2, 1, 0, 1]);
        assert_eq!(reflect(-100, 1), 0);
    }

    fn check_axis(len: usize, tile: usize, margin: usize) {
        let a = AxisPlan::new(len, tile, margin).unwrap();
        let mut covered = vec![0u8; len];
        for (i, &(lo, hi)) in a.owned.iter().enumerate() {
            for (x, c) in covered.iter_mut().enumerate().take(hi).skip(lo) {
                *c += 1;
                let d =
                    (x as isize - a.starts[i]).min(a.starts[i] + tile as isize - 1 - x as isize);
                assert!(
                    d >= margin as isize,
                    "len {len}: pixel {x} only {d} deep in tile {i}"
                );
            }
        }
        assert!(
            covered.iter().all(|&c| c == 1),
            "len {len}: every pixel owned exactly once"
        );
        for w in a.starts.windows(2) {
            assert!(w[1] - w[0] <= (tile - 2 * margin) as isize);
        }
    }

    #[test]
    fn every_pixel_owned_once_and_deep_enough() {
        for len in [1, 2, 37, 80, 81, 127, 128, 129, 173, 300, 1000] {
            check_axis(len, 128, 24);
            check_axis(len, 16, 3);
        }
    }

    #[test]
    fn gather_scatter_identity() {
        let (w, h) = (37, 11);
        let frame: Vec<f32> = (0..w * h).map(|i| i as f32).collect();
        let g = TileGrid::new(w, h, 8, 2).unwrap();
        let mut out = vec![-1.0; w * h];
        let mut tile = vec![0.0; 64];
        for k in 0..g.len() {
            g.gather(&frame, k, &mut tile);
            g.scatter(&tile, k, &mut out);
        }
        assert_eq!(out, frame);
    }

    #[test]
    fn seams_are_the_ownership_boundaries() {
        let g = TileGrid::new(100, 10, 32, 4).unwrap();
        let (a, b) = g.xs.owned[0];
        assert_eq!(a, 0);
        assert!(g.is_seam(b, 5) && g.is_seam(b - 1, 5));
        assert!(!g.is_seam(b / 2, 5));
        assert!(!g.is_seam(0, 5), "the frame border is not a seam");
    }

    #[test]
    fn bad_margin_is_an_error() {
        assert!(AxisPlan::new(10, 16, 8).is_err());
        assert!(AxisPlan::new(0, 16, 2).is_err());
    }
}
