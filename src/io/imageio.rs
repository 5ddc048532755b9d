//! Image files in and out: greyscale loading of PNG/TIFF/JPEG, atomic PNG writing, overlays.

use anyhow::{bail, Context, Result};
use image::{DynamicImage, ImageBuffer, Luma, Rgb};
use std::io::Write;
use std::path::{Path, PathBuf};

/// A greyscale image of raw intensities (0..255 for 8-bit, 0..65535 for 16-bit files).
#[derive(Clone, Debug, PartialEq)]
pub struct GrayImage {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// Row-major intensities.
    pub data: Vec<f32>,
}

/// File extensions `segment` picks up in directories.
pub const IMAGE_EXTENSIONS: &[&str] = &["png", "tif", "tiff", "jpg", "jpeg"];

/// File extensions of label images (lossless formats only; JPEG is no label format).
pub const LABEL_EXTENSIONS: &[&str] = &["png", "tif", "tiff"];

/// Whether `path` has one of [`IMAGE_EXTENSIONS`].
pub fn is_image_path(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .map(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        .unwrap_or(false)
}

/// The image files in `dir` (not recursive), sorted by name.
pub fn list_images(dir: &Path) -> Result<Vec<PathBuf>> {
    let (files, _) = walk_images(dir, false)?;
    Ok(files.into_iter().map(|rel| dir.join(rel)).collect())
}

/// The image files under `dir`, sorted, as paths relative to `dir`, and the subfolders that were
/// not entered: with `recursive` every subfolder is walked (symbolic links to folders are not
/// followed, so a link loop cannot recurse), otherwise each subfolder is returned as skipped.
/// A broken symbolic link with an image's name is listed too, so that loading it fails with its
/// name and target instead of the folder looking empty.
pub fn walk_images(dir: &Path, recursive: bool) -> Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    let (mut files, mut skipped) = (vec![], vec![]);
    let mut pending = vec![PathBuf::new()];
    while let Some(rel) = pending.pop() {
        let here = dir.join(&rel);
        let entries = std::fs::read_dir(&here)
            .with_context(|| format!("{}: cannot list directory", here.display()))?;
        for entry in entries.flatten() {
            let path = rel.join(entry.file_name());
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                if recursive {
                    pending.push(path);
                } else {
                    skipped.push(path);
                }
            } else if is_image_path(&path)
                && (entry.path().is_file() || is_broken_link(&entry.path()))
            {
                files.push(path);
            }
        }
    }
    files.sort();
    skipped.sort();
    Ok((files, skipped))
}

/// Whether `path` is a symbolic link whose target does not exist.
fn is_broken_link(path: &Path) -> bool {
    path.is_symlink() && !path.exists()
}

/// `path`'s open error, naming the missing target when `path` is a broken symbolic link.
fn open_error(path: &Path) -> String {
    match std::fs::read_link(path) {
        Ok(target) if !path.exists() => format!(
            "{}: cannot open: a symbolic link to {}, which does not exist",
            path.display(),
            target.display()
        ),
        _ => format!("{}: cannot open", path.display()),
    }
}

/// A label image's pixel values as instance ids (0 = background).
pub fn labels_of(img: &GrayImage) -> Vec<u32> {
    img.data.iter().map(|v| *v as u32).collect()
}

/// The ground truth of image `stem` in `dir`, as (width, height, instance labels): a label image
/// `STEM.png`, `STEM.tif` or `STEM.tiff`, else a DSB2018 folder `STEM/masks/*.png`; `None` when
/// there is neither.
pub fn find_truth(dir: &Path, stem: &str) -> Result<Option<(usize, usize, Vec<u32>)>> {
    for ext in LABEL_EXTENSIONS {
        let p = dir.join(format!("{stem}.{ext}"));
        if p.is_file() {
            let img = load_gray(&p)?;
            return Ok(Some((img.width, img.height, labels_of(&img))));
        }
    }
    let masks = dir.join(stem).join("masks");
    if masks.is_dir() {
        return load_instance_masks(&masks).map(Some);
    }
    Ok(None)
}

/// Instance labels from a DSB2018-style folder of binary masks, one nucleus per file (ids 1..=n in
/// file-name order). Returns (width, height, labels).
pub fn load_instance_masks(dir: &Path) -> Result<(usize, usize, Vec<u32>)> {
    let files = list_images(dir)?;
    if files.is_empty() {
        bail!(
            "{}: no mask images (expected one PNG per nucleus)",
            dir.display()
        );
    }
    let mut size = None;
    let mut labels = Vec::new();
    for (k, f) in files.iter().enumerate() {
        let m = load_gray(f)?;
        match size {
            None => {
                size = Some((m.width, m.height));
                labels = vec![0u32; m.width * m.height];
            }
            Some((w, h)) if (w, h) != (m.width, m.height) => {
                bail!(
                    "{}: mask is {}x{} but the other masks are {w}x{h}",
                    f.display(),
                    m.width,
                    m.height
                )
            }
            _ => {}
        }
        for (l, v) in labels.iter_mut().zip(&m.data) {
            if *v > 0.0 {
                *l = k as u32 + 1;
            }
        }
    }
    let (w, h) = size.expect("at least one mask");
    Ok((w, h, labels))
}

/// Loads an image as greyscale; colour images become the mean of their colour channels, which
/// keeps full precision for single-stain fluorescence (e.g. DAPI stored in the blue channel).
pub fn load_gray(path: &Path) -> Result<GrayImage> {
    load_gray_limited(path, crate::limits::DEFAULT_MAX_PIXELS)
}

/// [`load_gray`] for images of at most `max_pixels` pixels: the size the header declares is
/// checked before any pixel memory is allocated, and the decoder's own allocations are capped.
pub fn load_gray_limited(path: &Path, max_pixels: usize) -> Result<GrayImage> {
    let open = || -> Result<image::ImageReader<std::io::BufReader<std::fs::File>>> {
        image::ImageReader::open(path)
            .with_context(|| open_error(path))?
            .with_guessed_format()
            .with_context(|| format!("{}: cannot read", path.display()))
    };
    if open()?.format() == Some(image::ImageFormat::Tiff) {
        refuse_multi_page_tiff(path)?;
    }
    let (w, h) = open()?
        .into_dimensions()
        .with_context(|| format!("{}: not a readable PNG, TIFF or JPEG image", path.display()))?;
    crate::limits::check_frame(
        w as usize,
        h as usize,
        max_pixels,
        &path.display().to_string(),
    )?;
    let mut reader = open()?;
    let mut limits = image::Limits::default();
    // 16-bit RGBA is the widest layout decoded (8 bytes a pixel), plus the decoder's own buffers.
    limits.max_alloc = Some(
        (max_pixels as u64)
            .saturating_mul(8)
            .saturating_add(64 << 20),
    );
    reader.limits(limits);
    let img = reader
        .decode()
        .with_context(|| format!("{}: not a readable PNG, TIFF or JPEG image", path.display()))?;
    let (width, height) = (img.width() as usize, img.height() as usize);
    if width == 0 || height == 0 {
        bail!("{}: image is empty ({width}x{height})", path.display());
    }
    let data: Vec<f32> = match &img {
        DynamicImage::ImageLuma8(b) => b.as_raw().iter().map(|&v| v as f32).collect(),
        DynamicImage::ImageLuma16(b) => b.as_raw().iter().map(|&v| v as f32).collect(),
        DynamicImage::ImageLumaA8(b) => b.pixels().map(|p| p.0[0] as f32).collect(),
        DynamicImage::ImageLumaA16(b) => b.pixels().map(|p| p.0[0] as f32).collect(),
        DynamicImage::ImageRgb8(b) => b.pixels().map(|p| mean3(p.0.map(f32::from))).collect(),
        DynamicImage::ImageRgba8(b) => b
            .pixels()
            .map(|p| mean3([p.0[0], p.0[1], p.0[2]].map(f32::from)))
            .collect(),
        DynamicImage::ImageRgb16(b) => b.pixels().map(|p| mean3(p.0.map(f32::from))).collect(),
        DynamicImage::ImageRgba16(b) => b
            .pixels()
            .map(|p| mean3([p.0[0], p.0[1], p.0[2]].map(f32::from)))
            .collect(),
        other => other.to_luma32f().into_raw(),
    };
    Ok(GrayImage {
        width,
        height,
        data,
    })
}

/// A TIFF with more than one page (a stack or a time series) is refused by name: decoding only
/// its first page, as the image crate does, would silently drop the rest.
fn refuse_multi_page_tiff(path: &Path) -> Result<()> {
    let file =
        std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let Ok(mut decoder) = tiff::decoder::Decoder::new(std::io::BufReader::new(file)) else {
        // Not readable as TIFF: the image decoder reports it with its own reason.
        return Ok(());
    };
    let mut pages = 1;
    // Counting stops early: a stack of thousands is refused just the same.
    while pages < 1000 && decoder.more_images() {
        if decoder.next_image().is_err() {
            break;
        }
        pages += 1;
    }
    if pages > 1 {
        bail!(
            "{}: a multi-page TIFF ({}{pages} pages); segment reads single images — export the \
             pages as separate files (e.g. `tiffsplit` from libtiff-tools, or Fiji's Image > \
             Stacks > Stack to Images)",
            path.display(),
            if pages == 1000 { "at least " } else { "" }
        );
    }
    Ok(())
}

fn mean3(c: [f32; 3]) -> f32 {
    (c[0] + c[1] + c[2]) / 3.0
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, then a rename, so
/// a reader never sees a half-written file and a crash leaves the old file intact.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut set = OutputSet::default();
    set.stage(path, bytes)?;
    set.commit()
}

/// The temporary name `path` is staged under: `.NAME.tmp-PID` beside it.
fn temp_name(path: &Path) -> Result<PathBuf> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .with_context(|| format!("{}: not a file path", path.display()))?;
    Ok(dir.join(format!(
        ".{}{TEMP_MARK}{}",
        name.to_string_lossy(),
        std::process::id()
    )))
}

/// What separates a staged file's name from the process id that wrote it.
const TEMP_MARK: &str = ".tmp-";

/// Files that appear together or not at all: each is written and synced under a temporary name
/// first ([`OutputSet::stage`]); only when all are written does [`OutputSet::commit`] rename them
/// into place, in staging order (stage the file readers look for first — e.g. `eval`'s labels —
/// last). Dropped without a commit (an error on the way), it removes what it staged.
#[derive(Default)]
pub struct OutputSet {
    staged: Vec<(PathBuf, PathBuf)>,
}

impl OutputSet {
    /// Writes `bytes` under `path`'s temporary name.
    pub fn stage(&mut self, path: &Path, bytes: &[u8]) -> Result<()> {
        let tmp = temp_name(path)?;
        let result = (|| -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()
        })();
        match result {
            Ok(()) => {
                self.staged.push((tmp, path.to_path_buf()));
                Ok(())
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Err(e).with_context(|| format!("writing {}", path.display()))
            }
        }
    }

    /// Renames every staged file into place.
    pub fn commit(mut self) -> Result<()> {
        for (tmp, path) in std::mem::take(&mut self.staged) {
            std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    }
}

impl Drop for OutputSet {
    fn drop(&mut self) {
        for (tmp, _) in &self.staged {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

/// Removes the staged files (`.NAME.tmp-PID`) in `dir` that a process no longer running left
/// behind (killed between staging and commit); returns their paths. Linux: a process is alive
/// while `/proc/PID` exists.
pub fn remove_stale_temps(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut removed = vec![];
    let entries = std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let Some(pid) = name
            .strip_prefix('.')
            .and_then(|n| n.rsplit_once(TEMP_MARK))
            .and_then(|(_, pid)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let path = entry.path();
            std::fs::remove_file(&path)
                .with_context(|| format!("removing stale {}", path.display()))?;
            removed.push(path);
        }
    }
    Ok(removed)
}

fn encode_png(img: &DynamicImage) -> Result<Vec<u8>> {
    let mut buf = std::io::Cursor::new(Vec::new());
    img.write_to(&mut buf, image::ImageFormat::Png)?;
    Ok(buf.into_inner())
}

/// An 8-bit greyscale PNG.
pub fn png_gray8(width: usize, height: usize, data: Vec<u8>) -> Result<Vec<u8>> {
    let b = ImageBuffer::<Luma<u8>, _>::from_raw(width as u32, height as u32, data)
        .context("buffer size does not match the image size")?;
    encode_png(&DynamicImage::ImageLuma8(b))
}

/// A 0/1 mask as an 8-bit 0/255 PNG.
pub fn png_mask(width: usize, height: usize, mask: &[u8]) -> Result<Vec<u8>> {
    png_gray8(
        width,
        height,
        mask.iter().map(|&m| if m != 0 { 255 } else { 0 }).collect(),
    )
}

/// A 16-bit greyscale PNG (label images).
pub fn png_gray16(width: usize, height: usize, data: Vec<u16>) -> Result<Vec<u8>> {
    let b = ImageBuffer::<Luma<u16>, _>::from_raw(width as u32, height as u32, data)
        .context("buffer size does not match the image size")?;
    encode_png(&DynamicImage::ImageLuma16(b))
}

/// An RGB PNG.
pub fn png_rgb8(img: ImageBuffer<Rgb<u8>, Vec<u8>>) -> Result<Vec<u8>> {
    encode_png(&DynamicImage::ImageRgb8(img))
}

/// Writes an 8-bit greyscale PNG atomically.
pub fn save_gray8(path: &Path, width: usize, height: usize, data: Vec<u8>) -> Result<()> {
    write_atomic(path, &png_gray8(width, height, data)?)
}

/// Writes a 0/1 mask as an 8-bit 0/255 PNG atomically.
pub fn save_mask(path: &Path, width: usize, height: usize, mask: &[u8]) -> Result<()> {
    write_atomic(path, &png_mask(width, height, mask)?)
}

/// Writes a 16-bit greyscale PNG atomically (label images).
pub fn save_gray16(path: &Path, width: usize, height: usize, data: Vec<u16>) -> Result<()> {
    write_atomic(path, &png_gray16(width, height, data)?)
}

/// The normalized input as grey with the mask's outlines drawn in yellow.
pub fn overlay(
    normalized: &[f32],
    mask: &[u8],
    width: usize,
    height: usize,
) -> ImageBuffer<Rgb<u8>, Vec<u8>> {
    let mut rgb = vec![0u8; width * height * 3];
    overlay_into(normalized, mask, width, height, &mut rgb);
    ImageBuffer::from_raw(width as u32, height as u32, rgb).expect("buffer has the image size")
}

/// [`overlay`] into a caller-owned RGB buffer of `width * height * 3` bytes (no allocation).
pub fn overlay_into(normalized: &[f32], mask: &[u8], width: usize, height: usize, rgb: &mut [u8]) {
    for y in 0..height {
        for x in 0..width {
            let i = y * width + x;
            let g = (normalized[i].clamp(0.0, 1.0) * 255.0) as u8;
            let on = mask[i] != 0;
            let edge = on
                && (x == 0
                    || y == 0
                    || x + 1 == width
                    || y + 1 == height
                    || mask[i - 1] == 0
                    || mask[i + 1] == 0
                    || mask[i - width] == 0
                    || mask[i + width] == 0);
            let px = if edge { [255, 220, 0] } else { [g, g, g] };
            rgb[3 * i..3 * i + 3].copy_from_slice(&px);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn png_round_trip_8_and_16_bit_and_rgb_mean() {
        let dir = tempfile::tempdir().unwrap();
        let p8 = dir.path().join("a.png");
        save_gray8(&p8, 3, 2, vec![0, 10, 20, 30, 40, 255]).unwrap();
        let g = load_gray(&p8).unwrap();
        assert_eq!((g.width, g.height), (3, 2));
        assert_eq!(g.data, vec![0.0, 10.0, 20.0, 30.0, 40.0, 255.0]);
        let p16 = dir.path().join("b.png");
        save_gray16(&p16, 2, 1, vec![1000, 65535]).unwrap();
        assert_eq!(load_gray(&p16).unwrap().data, vec![1000.0, 65535.0]);
        let prgb = dir.path().join("c.png");
        write_atomic(
            &prgb,
            &png_rgb8(ImageBuffer::from_raw(1, 1, vec![0, 0, 30]).unwrap()).unwrap(),
        )
        .unwrap();
        assert_eq!(load_gray(&prgb).unwrap().data, vec![10.0]);
        // No temporary files are left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
    }

    #[cfg(unix)]
    #[test]
    fn a_broken_link_is_listed_and_its_load_names_the_missing_target() {
        // Regression: a folder of links whose targets had moved was reported as holding no images.
        let dir = tempfile::tempdir().unwrap();
        save_gray8(&dir.path().join("a.png"), 1, 1, vec![7]).unwrap();
        std::os::unix::fs::symlink(dir.path().join("gone.png"), dir.path().join("b.png")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("a.png"), dir.path().join("c.png")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("gone.txt"), dir.path().join("d.txt")).unwrap();
        let (files, _) = walk_images(dir.path(), false).unwrap();
        assert_eq!(files, ["a.png", "b.png", "c.png"].map(PathBuf::from));
        assert_eq!(load_gray(&dir.path().join("c.png")).unwrap().data, [7.0]);
        let err = format!("{:#}", load_gray(&dir.path().join("b.png")).unwrap_err());
        assert!(
            err.contains("b.png") && err.contains("gone.png") && err.contains("does not exist"),
            "{err}"
        );
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn an_output_set_that_fails_midway_leaves_none_of_its_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut set = OutputSet::default();
        set.stage(&dir.path().join("x.prob.png"), b"prob").unwrap();
        set.stage(&dir.path().join("x.csv"), b"csv").unwrap();
        // The third file cannot be written (its folder does not exist): the error names it,
        // and dropping the set removes what it had staged.
        let bad = dir.path().join("missing").join("x.labels.png");
        let err = set.stage(&bad, b"labels").unwrap_err();
        assert!(format!("{err:#}").contains("x.labels.png"), "{err:#}");
        drop(set);
        assert!(names(dir.path()).is_empty(), "{:?}", names(dir.path()));

        let mut set = OutputSet::default();
        set.stage(&dir.path().join("x.prob.png"), b"prob").unwrap();
        set.stage(&dir.path().join("x.csv"), b"csv").unwrap();
        // Staged but not committed: nothing under the final names yet.
        assert!(!dir.path().join("x.csv").exists());
        set.commit().unwrap();
        assert_eq!(names(dir.path()), ["x.csv", "x.prob.png"]);
        assert_eq!(std::fs::read(dir.path().join("x.csv")).unwrap(), b"csv");
    }

    #[test]
    fn stale_temporaries_of_dead_processes_are_removed_and_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        // No process has a pid this high (Linux caps pids at 2^22).
        let dead = dir.path().join(".x.mask.png.tmp-99999999");
        // pid 1 is always alive.
        let live = dir.path().join(".y.mask.png.tmp-1");
        let own = temp_name(&dir.path().join("z.png")).unwrap();
        let plain = dir.path().join("x.mask.png");
        for p in [&dead, &live, &own, &plain] {
            std::fs::write(p, b"x").unwrap();
        }
        let removed = remove_stale_temps(dir.path()).unwrap();
        assert_eq!(removed, vec![dead.clone()]);
        assert!(!dead.exists() && live.exists() && own.exists() && plain.exists());
    }

    #[test]
    fn a_multi_page_tiff_is_refused_by_name_and_a_single_page_one_read() {
        // Regression: only the first page of a stack was segmented, silently.
        use tiff::encoder::{colortype::Gray8, TiffEncoder};
        let dir = tempfile::tempdir().unwrap();
        let (one, three) = (dir.path().join("one.tif"), dir.path().join("stack.tif"));
        for (path, pages) in [(&one, 1), (&three, 3)] {
            let mut enc = TiffEncoder::new(std::fs::File::create(path).unwrap()).unwrap();
            for p in 0..pages {
                enc.write_image::<Gray8>(4, 3, &[p as u8 * 10; 12]).unwrap();
            }
        }
        assert_eq!(load_gray(&one).unwrap().data, vec![0.0; 12]);
        let err = format!("{:#}", load_gray(&three).unwrap_err());
        assert!(
            err.contains("stack.tif") && err.contains("multi-page TIFF (3 pages)"),
            "{err}"
        );
    }

    #[test]
    fn unreadable_file_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.png");
        std::fs::write(&p, b"not an image").unwrap();
        let e = format!("{:#}", load_gray(&p).unwrap_err());
        assert!(e.contains("bad.png"), "{e}");
    }

    #[test]
    fn overlay_marks_outline_only() {
        let mut mask = vec![0u8; 25];
        for y in 1..4 {
            for x in 1..4 {
                mask[y * 5 + x] = 1;
            }
        }
        let img = overlay(&[0.5; 25], &mask, 5, 5);
        assert_eq!(img.get_pixel(2, 2).0, [127, 127, 127]);
        assert_eq!(img.get_pixel(1, 1).0, [255, 220, 0]);
        assert_eq!(img.get_pixel(0, 0).0, [127, 127, 127]);
    }
}
