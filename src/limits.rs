//! Size limits checked before memory is allocated for a frame: a header or a flag that promises
//! a gigapixel must get a clear error, not an allocation the machine cannot give.

use anyhow::{bail, Result};

/// Default largest frame, in pixels: 50 MP, above an 8K UHD frame (33 MP) and any microscope
/// camera the README lists; `--max-pixels` raises it.
pub const DEFAULT_MAX_PIXELS: usize = 50_000_000;

/// Fails unless a `width` x `height` frame is non-empty and at most `max_pixels` pixels; `what`
/// names the input in the message.
pub fn check_frame(width: usize, height: usize, max_pixels: usize, what: &str) -> Result<()> {
    if width == 0 || height == 0 {
        bail!("{what}: frame is empty ({width}x{height})");
    }
    match width.checked_mul(height) {
        Some(n) if n <= max_pixels => Ok(()),
        _ => bail!(
            "{what}: a {width}x{height} frame is larger than the limit of {max_pixels} pixels \
             (--max-pixels raises it)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_over_the_limit_or_empty_are_refused_by_name() {
        assert!(check_frame(640, 480, DEFAULT_MAX_PIXELS, "x").is_ok());
        assert!(check_frame(10, 10, 100, "x").is_ok());
        let e = check_frame(11, 10, 100, "cam0").unwrap_err().to_string();
        assert!(e.contains("cam0") && e.contains("--max-pixels"), "{e}");
        let e = check_frame(usize::MAX, 2, DEFAULT_MAX_PIXELS, "x").unwrap_err();
        assert!(
            e.to_string().contains("larger than"),
            "overflow is not a panic"
        );
        assert!(check_frame(0, 5, 100, "x").is_err());
    }
}
