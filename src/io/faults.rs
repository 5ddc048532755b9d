//! `--inject-faults`: a source wrapper that damages a real source the way cameras fail — corrupt
//! frames, stalls, disconnects — at seeded random moments, so a soak run (or a test) drives the
//! live loop's recovery paths for hours without a flaky USB cable.

use crate::io::source::{FrameBuf, FrameSource, Next, SourceError};
use crate::rng::Rng;
use std::time::{Duration, Instant};

/// How often each fault happens, as a probability per delivered frame.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FaultRates {
    /// A frame arrives damaged (the loop skips and counts it).
    pub corrupt: f64,
    /// The source goes quiet for [`FaultRates::stall_secs`] (no frames, timeouts).
    pub stall: f64,
    /// The device goes away for a few retries (the loop's reconnect back-off).
    pub disconnect: f64,
    /// Length of a stall in seconds.
    pub stall_secs: f64,
}

impl std::str::FromStr for FaultRates {
    type Err = String;

    /// `corrupt=P,stall=P,disconnect=P[,stall-secs=S]`; missing keys are 0 (stall-secs 5).
    fn from_str(s: &str) -> Result<FaultRates, String> {
        let mut r = FaultRates {
            stall_secs: 5.0,
            ..Default::default()
        };
        for part in s.split(',').filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').ok_or_else(|| {
                format!("{part:?}: expected KEY=VALUE (corrupt, stall, disconnect, stall-secs)")
            })?;
            let v: f64 = v
                .parse()
                .ok()
                .filter(|v: &f64| v.is_finite() && *v >= 0.0)
                .ok_or_else(|| format!("{k}={v}: expected a number >= 0"))?;
            let slot = match k {
                "corrupt" => &mut r.corrupt,
                "stall" => &mut r.stall,
                "disconnect" => &mut r.disconnect,
                "stall-secs" => &mut r.stall_secs,
                _ => {
                    return Err(format!(
                        "unknown fault {k:?}; expected corrupt, stall, disconnect or stall-secs"
                    ))
                }
            };
            *slot = v;
        }
        if r.corrupt + r.stall + r.disconnect > 1.0 {
            return Err(format!(
                "{s}: the probabilities add up to more than 1 (they are per frame)"
            ));
        }
        Ok(r)
    }
}

/// Counts of the faults a [`Faulty`] source injected.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// Frames delivered as corrupt.
    pub corrupt: u64,
    /// Stalls begun.
    pub stalls: u64,
    /// Disconnects begun.
    pub disconnects: u64,
}

/// A source with faults injected into it.
pub struct Faulty<S> {
    inner: S,
    rates: FaultRates,
    rng: Rng,
    stall_until: Option<Instant>,
    /// Disconnected answers still to give.
    down: u32,
    counts: FaultCounts,
}

impl<S: FrameSource> Faulty<S> {
    /// `inner` with faults at `rates`, decided by a generator seeded with `seed`.
    pub fn new(inner: S, rates: FaultRates, seed: u64) -> Faulty<S> {
        Faulty {
            inner,
            rates,
            rng: Rng::new(seed),
            stall_until: None,
            down: 0,
            counts: FaultCounts::default(),
        }
    }

    /// What was injected so far.
    pub fn counts(&self) -> FaultCounts {
        self.counts
    }
}

impl<S: FrameSource> FrameSource for Faulty<S> {
    fn next_into(&mut self, out: &mut FrameBuf, timeout: Duration) -> Result<Next, SourceError> {
        if let Some(until) = self.stall_until {
            let now = Instant::now();
            if now < until {
                // A stalled camera answers nothing until the read times out.
                std::thread::sleep(timeout.min(until - now));
                return Err(SourceError::Timeout);
            }
            self.stall_until = None;
        }
        if self.down > 0 {
            self.down -= 1;
            return Err(SourceError::Disconnected("injected fault".into()));
        }
        let next = self.inner.next_into(out, timeout)?;
        if next == Next::End {
            return Ok(next);
        }
        let r = (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let r = if r < self.rates.corrupt {
            self.counts.corrupt += 1;
            return Err(SourceError::Corrupt("injected fault".into()));
        } else {
            r - self.rates.corrupt
        };
        let r = if r < self.rates.stall {
            self.counts.stalls += 1;
            log::warn!("injected fault: a stall of {} s", self.rates.stall_secs);
            self.stall_until =
                Some(Instant::now() + Duration::from_secs_f64(self.rates.stall_secs));
            return Err(SourceError::Timeout);
        } else {
            r - self.rates.stall
        };
        if r < self.rates.disconnect {
            self.counts.disconnects += 1;
            self.down = 2;
            return Err(SourceError::Disconnected("injected fault".into()));
        }
        Ok(next)
    }

    fn is_live(&self) -> bool {
        self.inner.is_live()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A source of numbered 1x1 frames that never ends.
    struct Counter(u64);
    impl FrameSource for Counter {
        fn next_into(&mut self, out: &mut FrameBuf, _: Duration) -> Result<Next, SourceError> {
            out.resize(1, 1);
            out.index = self.0;
            self.0 += 1;
            Ok(Next::Frame)
        }
    }

    #[test]
    fn spec_parses_and_bad_specs_name_the_key() {
        let r: FaultRates = "corrupt=0.1,stall=0.01,disconnect=0.02,stall-secs=2"
            .parse()
            .unwrap();
        assert_eq!(
            (r.corrupt, r.stall, r.disconnect, r.stall_secs),
            (0.1, 0.01, 0.02, 2.0)
        );
        assert_eq!("".parse::<FaultRates>().unwrap().stall_secs, 5.0);
        assert!("jitter=0.1"
            .parse::<FaultRates>()
            .unwrap_err()
            .contains("jitter"));
        assert!("corrupt=-1"
            .parse::<FaultRates>()
            .unwrap_err()
            .contains("corrupt"));
        assert!("corrupt=0.6,stall=0.6".parse::<FaultRates>().is_err());
    }

    #[test]
    fn faults_come_at_their_rates_and_the_source_recovers() {
        let rates: FaultRates = "corrupt=0.2,disconnect=0.1".parse().unwrap();
        let mut src = Faulty::new(Counter(0), rates, 7);
        let mut f = FrameBuf::default();
        let (mut frames, mut corrupt, mut down) = (0, 0, 0);
        for _ in 0..10_000 {
            match src.next_into(&mut f, Duration::ZERO) {
                Ok(Next::Frame) => frames += 1,
                Err(SourceError::Corrupt(_)) => corrupt += 1,
                Err(SourceError::Disconnected(_)) => down += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
        let c = src.counts();
        assert_eq!(c.corrupt, corrupt);
        // Each disconnect answers three times: when it happens and two retries.
        assert_eq!(3 * c.disconnects, down);
        let delivered = frames + corrupt + c.disconnects;
        let rate = |n: u64| n as f64 / delivered as f64;
        assert!(
            (rate(corrupt) - 0.2).abs() < 0.02,
            "corrupt rate {}",
            rate(corrupt)
        );
        assert!((rate(c.disconnects) - 0.1).abs() < 0.02);
        // 10,000 answers are ~8,300 draws (a disconnect takes three answers), 70 % of them frames.
        assert!(frames > 5500, "{frames} frames");
    }

    #[test]
    fn a_stall_answers_timeouts_for_its_length() {
        let rates: FaultRates = "stall=1,stall-secs=0.05".parse().unwrap();
        let mut src = Faulty::new(Counter(0), rates, 1);
        let mut f = FrameBuf::default();
        let t0 = Instant::now();
        assert!(matches!(
            src.next_into(&mut f, Duration::from_millis(10)),
            Err(SourceError::Timeout)
        ));
        let mut timeouts = 0;
        while t0.elapsed() < Duration::from_millis(45) {
            assert!(matches!(
                src.next_into(&mut f, Duration::from_millis(10)),
                Err(SourceError::Timeout)
            ));
            timeouts += 1;
        }
        assert!(timeouts >= 2);
        assert_eq!(src.counts().stalls, 1);
    }
}
