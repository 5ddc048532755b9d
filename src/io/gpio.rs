//! Microscope I/O through embedded-hal 1.0 pins: a trigger input (one frame per rising edge), a
//! busy LED and a nuclei-count alert. The live loop is generic over the pin traits, so tests use
//! embedded-hal-mock and the board uses linux-embedded-hal's character-device pins.

use anyhow::{bail, Context, Result};
use embedded_hal::digital::{ErrorType, InputPin, OutputPin};
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// A GPIO line named as `CHIP:LINE`, e.g. `gpiochip0:17` or `/dev/gpiochip0:17` or `0:17`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinSpec {
    /// Character device path of the chip.
    pub chip: String,
    /// Line offset on the chip.
    pub line: u32,
}

impl std::str::FromStr for PinSpec {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<PinSpec> {
        let (chip, line) = s
            .rsplit_once(':')
            .with_context(|| format!("bad GPIO {s:?}: expected CHIP:LINE, e.g. gpiochip0:17"))?;
        let line: u32 = line
            .parse()
            .with_context(|| format!("bad GPIO {s:?}: line {line:?} is not a number"))?;
        let chip = if chip.starts_with('/') {
            chip.to_string()
        } else if chip.chars().all(|c| c.is_ascii_digit()) && !chip.is_empty() {
            format!("/dev/gpiochip{chip}")
        } else if chip.starts_with("gpiochip") {
            format!("/dev/{chip}")
        } else {
            bail!("bad GPIO {s:?}: chip must be gpiochipN, /dev/gpiochipN or N");
        };
        Ok(PinSpec { chip, line })
    }
}

/// A pin that is not connected: reads low, ignores writes.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoPin;

impl ErrorType for NoPin {
    type Error = Infallible;
}

impl InputPin for NoPin {
    fn is_high(&mut self) -> Result<bool, Infallible> {
        Ok(false)
    }
    fn is_low(&mut self) -> Result<bool, Infallible> {
        Ok(true)
    }
}

impl OutputPin for NoPin {
    fn set_low(&mut self) -> Result<(), Infallible> {
        Ok(())
    }
    fn set_high(&mut self) -> Result<(), Infallible> {
        Ok(())
    }
}

/// The loop's pins. Pin errors are reported once and then ignored: a loose LED must not stop imaging.
pub struct Pins<T: InputPin, B: OutputPin, A: OutputPin> {
    /// Trigger input, if frames are processed on rising edges only.
    pub trigger: Option<T>,
    /// High while a frame is processed.
    pub busy: Option<B>,
    /// High while the nuclei count is at least `alert_count`.
    pub alert: Option<A>,
    /// Count threshold of the alert.
    pub alert_count: usize,
    last_level: bool,
    reported: bool,
}

impl<T: InputPin, B: OutputPin, A: OutputPin> Pins<T, B, A> {
    /// Pins as given; `None` for those not wired.
    pub fn new(trigger: Option<T>, busy: Option<B>, alert: Option<A>, alert_count: usize) -> Self {
        Pins {
            trigger,
            busy,
            alert,
            alert_count,
            last_level: true,
            reported: false,
        }
    }

    fn report<E: std::fmt::Debug>(&mut self, what: &str, r: Result<(), E>) {
        if let Err(e) = r {
            if !self.reported {
                log::warn!("GPIO {what} failed: {e:?} (further GPIO errors are not shown)");
                self.reported = true;
            }
        }
    }

    /// Whether frames are gated by the trigger.
    pub fn triggered(&self) -> bool {
        self.trigger.is_some()
    }

    /// Polls the trigger for a rising edge for up to `timeout`; true when one came. Without a
    /// trigger pin every frame counts, so this returns true at once.
    pub fn wait_rising_edge(&mut self, timeout: Duration, stop: &AtomicBool) -> bool {
        let Some(pin) = self.trigger.as_mut() else {
            return true;
        };
        let t0 = std::time::Instant::now();
        while t0.elapsed() < timeout && !stop.load(Ordering::Relaxed) {
            let level = pin.is_high().unwrap_or(false);
            let rising = level && !self.last_level;
            self.last_level = level;
            if rising {
                return true;
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        false
    }

    /// Sets the busy LED.
    pub fn busy(&mut self, on: bool) {
        if let Some(p) = self.busy.as_mut() {
            let r = if on { p.set_high() } else { p.set_low() };
            self.report("busy LED", r);
        }
    }

    /// Updates the alert from the latest nuclei count.
    pub fn count(&mut self, nuclei: usize) {
        let on = nuclei >= self.alert_count;
        if let Some(p) = self.alert.as_mut() {
            let r = if on { p.set_high() } else { p.set_low() };
            self.report("alert", r);
        }
    }
}

/// Board pins: GPIO character-device lines through linux-embedded-hal.
#[cfg(target_os = "linux")]
pub mod board {
    use super::PinSpec;
    use anyhow::{Context, Result};
    use linux_embedded_hal::gpio_cdev::{Chip, LineRequestFlags};
    use linux_embedded_hal::CdevPin;

    fn request(spec: &PinSpec, flags: LineRequestFlags) -> Result<CdevPin> {
        let mut chip = Chip::new(&spec.chip).with_context(|| {
            format!(
                "opening GPIO chip {} (does it exist, and may this user open it? see README)",
                spec.chip
            )
        })?;
        let line = chip
            .get_line(spec.line)
            .with_context(|| format!("GPIO {}:{}", spec.chip, spec.line))?;
        let handle = line
            .request(flags, 0, "unet-edge")
            .with_context(|| format!("requesting GPIO {}:{} (busy?)", spec.chip, spec.line))?;
        CdevPin::new(handle).with_context(|| format!("GPIO {}:{}", spec.chip, spec.line))
    }

    /// An input line.
    pub fn input(spec: &PinSpec) -> Result<CdevPin> {
        request(spec, LineRequestFlags::INPUT)
    }

    /// An output line, initially low.
    pub fn output(spec: &PinSpec) -> Result<CdevPin> {
        request(spec, LineRequestFlags::OUTPUT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use embedded_hal_mock::eh1::digital::{Mock, State, Transaction};

    #[test]
    fn pin_specs_parse_and_bad_ones_are_named() {
        assert_eq!(
            "gpiochip0:17".parse::<PinSpec>().unwrap(),
            PinSpec {
                chip: "/dev/gpiochip0".into(),
                line: 17
            }
        );
        assert_eq!("1:4".parse::<PinSpec>().unwrap().chip, "/dev/gpiochip1");
        assert_eq!("/dev/gpiochip2:3".parse::<PinSpec>().unwrap().line, 3);
        for bad in ["17", "gpiochip0:x", "foo:1"] {
            let e = bad.parse::<PinSpec>().unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
    }

    #[test]
    fn rising_edges_busy_and_alert() {
        let trigger = Mock::new(&[
            Transaction::get(State::Low),
            Transaction::get(State::High),
            Transaction::get(State::High),
            Transaction::get(State::Low),
            Transaction::get(State::High),
        ]);
        let busy = Mock::new(&[Transaction::set(State::High), Transaction::set(State::Low)]);
        let alert = Mock::new(&[Transaction::set(State::Low), Transaction::set(State::High)]);
        let mut pins = Pins::new(Some(trigger), Some(busy), Some(alert), 10);
        let stop = AtomicBool::new(false);
        assert!(
            pins.wait_rising_edge(Duration::from_secs(1), &stop),
            "low→high"
        );
        // High→high is no edge; high→low→high is the next one.
        assert!(pins.wait_rising_edge(Duration::from_secs(1), &stop));
        pins.busy(true);
        pins.busy(false);
        pins.count(3);
        pins.count(12);
        let Pins {
            trigger,
            busy,
            alert,
            ..
        } = pins;
        trigger.unwrap().done();
        busy.unwrap().done();
        alert.unwrap().done();
    }
}
