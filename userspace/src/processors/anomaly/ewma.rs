//! One signal's baseline and alarm state: an exponentially weighted moving average of its mean
//! and variance over closed windows, the Z-score of a new window against it, and the rules that
//! keep alarms honest — a cold start (no alarm before `cold_start_windows` judged windows), a
//! noise floor on the deviation (supplied by the caller per signal), and hysteresis (an alarm
//! starts at `threshold` and ends only after `end_windows` windows under `end_threshold`).
//! While an alarm is on, the baseline does not learn from the anomalous windows.
//!
//! Pure arithmetic: no clock, no I/O; the detector feeds it one value per closed window.

/// EWMA mean and variance (West's incremental form).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Ewma {
    pub mean: f64,
    pub var: f64,
    /// Windows learnt.
    pub n: u32,
}

impl Ewma {
    pub fn learn(&mut self, x: f64, alpha: f64) {
        if self.n == 0 {
            self.mean = x;
            self.var = 0.0;
        } else {
            let d = x - self.mean;
            self.mean += alpha * d;
            self.var = (1.0 - alpha) * (self.var + alpha * d * d);
        }
        self.n = self.n.saturating_add(1);
    }

    /// Z-score of `x` with the standard deviation floored at `floor` (> 0).
    pub fn z(&self, x: f64, floor: f64) -> f64 {
        (x - self.mean) / self.var.sqrt().max(floor).max(f64::MIN_POSITIVE)
    }
}

/// The tuning that applies to every signal.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rules {
    pub alpha: f64,
    pub threshold: f64,
    pub end_threshold: f64,
    pub end_windows: u32,
    pub cold_start_windows: u32,
    /// Consecutive windows at or above `threshold` that start an anomaly (one window of noise
    /// never does when this is 2 or more).
    pub start_windows: u32,
}

/// What a closed window did to a signal.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Change {
    Started { z: f64, baseline: f64 },
    Ended { z: f64, baseline: f64 },
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Signal {
    pub base: Ewma,
    pub active: bool,
    /// Consecutive windows under the end threshold while active.
    quiet: u32,
    /// Consecutive windows at or above the threshold while not active.
    hot: u32,
    /// The last judged window's score.
    pub last_z: f64,
}

impl Signal {
    /// Whether `x` would be anomalous now (used for windows still open).
    pub fn beyond(&self, x: f64, floor: f64, r: &Rules) -> bool {
        self.base.n >= r.cold_start_windows && self.base.z(x, floor) >= r.threshold
    }

    /// A closed window with enough traffic: value `x`, deviation floor `floor`. Only upward
    /// deviations alarm (slower, more errors).
    pub fn window(&mut self, x: f64, floor: f64, r: &Rules) -> Option<Change> {
        let warm = self.base.n >= r.cold_start_windows;
        let z = if warm { self.base.z(x, floor) } else { 0.0 };
        self.last_z = z;
        let baseline = self.base.mean;
        if self.active {
            if z < r.end_threshold {
                self.quiet += 1;
                if self.quiet >= r.end_windows {
                    self.active = false;
                    self.quiet = 0;
                    self.base.learn(x, r.alpha);
                    return Some(Change::Ended { z, baseline });
                }
            } else {
                self.quiet = 0;
            }
            return None;
        }
        if warm && z >= r.threshold {
            self.hot += 1;
            if self.hot >= r.start_windows {
                self.active = true;
                self.quiet = 0;
                self.hot = 0;
                return Some(Change::Started { z, baseline });
            }
            // Not learnt: a window that may be the start of an anomaly must not move the
            // baseline it is judged against.
            return None;
        }
        self.hot = 0;
        self.base.learn(x, r.alpha);
        None
    }

    /// A window too quiet to judge: it teaches nothing; an active alarm counts it as quiet
    /// (traffic that stopped is no evidence the fault goes on).
    pub fn idle(&mut self, r: &Rules) -> Option<Change> {
        if !self.active {
            return None;
        }
        self.quiet += 1;
        if self.quiet >= r.end_windows {
            self.active = false;
            self.quiet = 0;
            return Some(Change::Ended {
                z: 0.0,
                baseline: self.base.mean,
            });
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: Rules = Rules {
        alpha: 0.2,
        threshold: 4.0,
        end_threshold: 2.0,
        end_windows: 2,
        cold_start_windows: 5,
        start_windows: 1,
    };

    /// Deterministic noise in [-1, 1].
    fn noise(i: u64) -> f64 {
        let x = (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11) as f64 / (1u64 << 53) as f64;
        2.0 * x - 1.0
    }

    /// Runs a series (latency-like, floor 10% of the baseline at threshold 4 → 2.5%) and returns
    /// the windows where alarms started and ended.
    fn run(series: &[f64]) -> (Vec<usize>, Vec<usize>) {
        let mut s = Signal::default();
        let (mut starts, mut ends) = (Vec::new(), Vec::new());
        for (i, &x) in series.iter().enumerate() {
            let floor = 0.1 * s.base.mean / RULES.threshold;
            match s.window(x, floor, &RULES) {
                Some(Change::Started { .. }) => starts.push(i),
                Some(Change::Ended { .. }) => ends.push(i),
                None => {}
            }
        }
        (starts, ends)
    }

    #[test]
    fn noise_alone_never_alarms() {
        // ±5% noise around 100 ms for 10 000 windows (a day of 10 s windows is 8 640).
        let series: Vec<f64> = (0..10_000).map(|i| 0.1 + 0.005 * noise(i)).collect();
        assert_eq!(run(&series), (vec![], vec![]));
    }

    #[test]
    fn a_step_alarms_at_once_and_ends_after_the_hysteresis() {
        let mut series: Vec<f64> = (0..50).map(|i| 0.1 + 0.005 * noise(i)).collect();
        // Latency triples for 10 windows, then recovers.
        series.extend((50..60).map(|i| 0.3 + 0.005 * noise(i)));
        series.extend((60..100).map(|i| 0.1 + 0.005 * noise(i)));
        let (starts, ends) = run(&series);
        assert_eq!(starts, vec![50]);
        // Ends on the second quiet window (end_windows = 2).
        assert_eq!(ends, vec![61]);
    }

    #[test]
    fn a_spike_of_one_window_is_one_short_alarm() {
        let mut series: Vec<f64> = (0..40).map(|i| 0.1 + 0.002 * noise(i)).collect();
        series[30] = 1.0;
        let (starts, ends) = run(&series);
        assert_eq!((starts, ends), (vec![30], vec![32]));
    }

    #[test]
    fn a_slow_ramp_is_learnt_not_alarmed_but_a_fast_one_is_caught() {
        // +0.2% per window: the baseline follows.
        let slow: Vec<f64> = (0..300).map(|i| 0.1 * (1.0 + 0.002 * i as f64)).collect();
        assert_eq!(run(&slow).0, Vec::<usize>::new());
        // +15% per window after window 20: caught within a few windows.
        let fast: Vec<f64> = (0..40)
            .map(|i| 0.1 * (1.0 + 0.15 * (i as f64 - 20.0).max(0.0)))
            .collect();
        let starts = run(&fast).0;
        assert_eq!(starts.len(), 1, "{starts:?}");
        assert!((21..=24).contains(&starts[0]), "{starts:?}");
    }

    #[test]
    fn cold_start_keeps_quiet_until_the_baseline_is_learnt() {
        // The first windows are wild (warm-up): no alarm before 5 windows were learnt.
        let series = [0.1, 1.0, 0.05, 2.0, 0.1, 0.1, 0.1];
        let mut s = Signal::default();
        for (i, x) in series.iter().enumerate() {
            let got = s.window(*x, 0.01, &RULES);
            assert!(got.is_none(), "window {i}: {got:?}");
        }
        assert_eq!(s.base.n, 7);
        // Once warm, a large value does alarm.
        assert!(matches!(
            s.window(100.0, 0.01, &RULES),
            Some(Change::Started { .. })
        ));
        // A quiet window (too little traffic) counts towards the end.
        assert!(s.idle(&RULES).is_none());
        assert!(matches!(s.idle(&RULES), Some(Change::Ended { .. })));
    }

    #[test]
    fn decreases_never_alarm() {
        let mut series: Vec<f64> = (0..30).map(|i| 0.1 + 0.002 * noise(i)).collect();
        series.extend([0.001; 10]);
        assert_eq!(run(&series).0, Vec::<usize>::new());
    }

    #[test]
    fn with_start_windows_one_window_of_noise_never_alarms_and_is_not_learnt() {
        let r = Rules {
            start_windows: 2,
            ..RULES
        };
        let mut s = Signal::default();
        for i in 0..20 {
            assert_eq!(s.window(10.0 + 0.1 * noise(i), 0.01, &r), None);
        }
        let before = s.base;
        // One spike: no alarm, the baseline untouched.
        assert_eq!(s.window(30.0, 0.01, &r), None);
        assert!(s.hot == 1 && !s.active);
        assert_eq!(s.base, before);
        // Back to normal: the count starts again.
        assert_eq!(s.window(10.0, 0.01, &r), None);
        assert_eq!(s.hot, 0);
        // Two windows in a row: the second starts it.
        assert_eq!(s.window(30.0, 0.01, &r), None);
        assert!(matches!(
            s.window(30.0, 0.01, &r),
            Some(Change::Started { .. })
        ));
        assert!(s.active && s.hot == 0);
    }
}
