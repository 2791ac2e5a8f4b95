//! Per-adapter kernel selection.
//!
//! Some ops have several kernels (candidates) that compute the same result, each fast on a
//! different kind of adapter: a 128×128 shared-memory tile for a large GPU, a small tile without
//! shared memory for a CPU adapter, a GEMV for few rows. An op family declares its candidates as
//! an enum implementing [`Candidate`] and its shape classes as a type that displays as the class's
//! name (sizes rounded with [`size_class`]); this module never names an op. The first time an op
//! meets a new shape class on an adapter, wgnn times every candidate that fits on inputs of that
//! shape (GPU timestamps where the adapter has them, else the host clock around a waited
//! submission) and keeps the fastest. Choices persist in a JSON file per adapter in the platform's
//! cache directory (`~/.cache/wgnn` on Linux), keyed by adapter, driver and wgnn version; a file
//! that cannot be read, or that was written for another adapter, driver or version, is ignored
//! and rewritten.
//!
//! [`Tuning::Off`] (env `WGNN_TUNE=off`) always takes each op's fixed default: deterministic, no
//! timing. `cargo run --release --example tune` tunes the common shapes ahead of time.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::Result;

/// Whether ops time their candidates on first use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Tuning {
    /// Time the candidates for each new shape class and keep the fastest (the default).
    #[default]
    Auto,
    /// Like `Auto`, but neither reads nor writes the cache file: every process tunes anew.
    Session,
    /// Like `Auto`, but ignores the choices in the cache file: each class is timed again on its
    /// first use in this process and its new choice replaces the old one in the file (after a
    /// driver update that kept its version, or choices timed while the machine was busy).
    Retune,
    /// Always the fixed default candidate: deterministic, no timing, no cache file.
    Off,
}

/// How long the tuning of one shape class may take, in wall time (compiles included), so that the
/// first call of a class costs at most a bounded multiple of its untuned cost. The budget of a
/// class is `relative ×` the default candidate's first run (compile included), but at least
/// `floor` and at most `ceiling`; a candidate whose expected cost (its runs at the best time so
/// far) would pass it is not tried, and the fastest of those tried is kept. The untried ones are
/// listed in [`TuningRecord::skipped`]; [`Tuning::Retune`] or the `tune` example with a larger
/// budget times them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TuningBudget {
    /// Always allowed: small classes are timed in full within it. Default 0.5 s.
    pub floor: Duration,
    /// The budget as a multiple of the default candidate's first run. Default 2.5: a large
    /// class's first call then costs at most about 3.5× its untuned time (the default's run, room
    /// for one more candidate's run, then the call itself).
    pub relative: f64,
    /// Never more than this per class. Default 30 s.
    pub ceiling: Duration,
}

impl Default for TuningBudget {
    fn default() -> Self {
        TuningBudget {
            floor: Duration::from_millis(500),
            relative: 2.5,
            ceiling: Duration::from_secs(30),
        }
    }
}

impl TuningBudget {
    /// A budget for tuning ahead of time (the `tune` example): every candidate of most classes.
    pub fn thorough() -> Self {
        TuningBudget {
            floor: Duration::from_secs(10),
            relative: 40.0,
            ceiling: Duration::from_secs(600),
        }
    }

    /// Checks the fields: `floor <= ceiling`, `relative` finite and at least 0, `ceiling` at
    /// most an hour.
    pub fn validate(&self) -> Result<()> {
        let ok = self.floor <= self.ceiling
            && self.relative.is_finite()
            && self.relative >= 0.0
            && self.ceiling <= Duration::from_secs(3600);
        if ok {
            Ok(())
        } else {
            Err(crate::error::Error::InvalidArgument {
                op: "TuningBudget",
                details: format!(
                    "needs floor <= ceiling <= 1 hour and a finite relative >= 0, got {self:?}"
                ),
            })
        }
    }

    /// The budget of a class whose default candidate's first run took `default_run`.
    fn for_class(&self, default_run: Duration) -> Duration {
        default_run
            .mul_f64(self.relative)
            .clamp(self.floor, self.ceiling)
    }
}

/// One op family's kernel choices: a closed set with stable names (the names are what cache files
/// and [`TuningRecord`]s hold).
pub trait Candidate: Copy + Eq + std::fmt::Debug + Send + Sync + 'static {
    /// The family's name: the first part of its classes in cache files, and what
    /// [`crate::Gpu::force_candidate`] pins.
    const OP: &'static str;
    /// Every candidate, the likely winners first (tuning stops at its budget).
    const ALL: &'static [Self];
    /// The candidate's stable name.
    fn name(self) -> &'static str;
    /// The candidate of that name.
    fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|c| c.name() == name)
    }
}

/// `x` rounded up to a power of two: the size classes of shape classes.
pub fn size_class(x: usize) -> usize {
    x.max(1).checked_next_power_of_two().unwrap_or(usize::MAX)
}

/// What the tuner knows about one adapter, as stored in its cache file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct CacheHeader {
    format: u32,
    wgnn: String,
    adapter: String,
    vendor: u32,
    device: u32,
    backend: String,
    driver: String,
    driver_info: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct CacheFile {
    header: CacheHeader,
    /// Shape class → chosen candidate.
    choices: BTreeMap<String, String>,
}

/// Version 2: classes are named `<op>/<class>` by each op's typed class. Version 3: matmul has
/// `gemv_dot` and `tiled8x2sr`, and a CPU adapter times its candidates in another order (earlier
/// choices are retimed).
const FORMAT: u32 = 3;

/// One adapter's tuner: the mode, the choices made so far, and the cache file.
pub(crate) struct Tuner {
    mode: Tuning,
    budget: TuningBudget,
    header: CacheHeader,
    file: Option<PathBuf>,
    /// None until the cache file has been read (on the first lookup).
    choices: Mutex<Option<BTreeMap<String, String>>>,
    /// Op name → the pinned candidate's name.
    forced: Mutex<HashMap<&'static str, &'static str>>,
    timings: Mutex<Vec<TuningRecord>>,
    /// Held by the thread that is timing candidates.
    turn: Mutex<()>,
}

/// What timing the candidates of one class found.
struct Timed<C> {
    times: Vec<(&'static str, Duration)>,
    skipped: Vec<&'static str>,
    best: Option<(C, Duration)>,
    budget: Duration,
}

/// One tuning done in this process: the class, each candidate's time, and the winner.
#[derive(Debug, Clone)]
pub struct TuningRecord {
    /// The op family ([`Candidate::OP`]).
    pub op: &'static str,
    /// The shape class, as the family names it.
    pub class: String,
    /// Each candidate timed, with its fastest run (its first run alone where that was already far
    /// behind the best); candidates that failed are absent.
    pub times: Vec<(&'static str, Duration)>,
    /// Candidates not tried: the class's budget would have been passed.
    pub skipped: Vec<&'static str>,
    /// The candidate kept.
    pub chosen: &'static str,
    /// Wall time the tuning took, compiles included.
    pub took: Duration,
    /// The class's budget.
    pub budget: Duration,
}

impl Tuner {
    pub(crate) fn new(
        info: &wgpu::AdapterInfo,
        mode: Tuning,
        budget: TuningBudget,
        dir: Option<PathBuf>,
    ) -> Self {
        let header = CacheHeader {
            format: FORMAT,
            wgnn: env!("CARGO_PKG_VERSION").to_string(),
            adapter: info.name.clone(),
            vendor: info.vendor,
            device: info.device,
            backend: format!("{:?}", info.backend),
            driver: info.driver.clone(),
            driver_info: info.driver_info.clone(),
        };
        let file = dir.map(|d| d.join(cache_file_name(&header)));
        Tuner {
            mode,
            budget,
            header,
            file,
            choices: Mutex::new(None),
            forced: Mutex::default(),
            timings: Mutex::default(),
            turn: Mutex::default(),
        }
    }

    pub(crate) fn mode(&self) -> Tuning {
        self.mode
    }

    pub(crate) fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    pub(crate) fn force<C: Candidate>(&self, candidate: Option<C>) {
        if let Ok(mut f) = self.forced.lock() {
            match candidate {
                Some(c) => f.insert(C::OP, c.name()),
                None => f.remove(C::OP),
            };
        }
    }

    /// Forgets every choice, here and in the cache file: classes are timed again on next use.
    pub(crate) fn forget(&self) {
        self.with_choices(|c| {
            c.clear();
            self.save(c);
        });
    }

    pub(crate) fn records(&self) -> Vec<TuningRecord> {
        self.timings.lock().map(|t| t.clone()).unwrap_or_default()
    }

    pub(crate) fn choices(&self) -> BTreeMap<String, String> {
        self.with_choices(|c| c.clone())
    }

    fn with_choices<T>(&self, f: impl FnOnce(&mut BTreeMap<String, String>) -> T) -> T {
        let mut guard = match self.choices.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let choices = guard.get_or_insert_with(|| self.load());
        f(choices)
    }

    /// The cached choices, or none when the file is missing, unreadable, or for another
    /// adapter, driver or wgnn version.
    fn load(&self) -> BTreeMap<String, String> {
        let Some(path) = &self.file else {
            return BTreeMap::new();
        };
        if self.mode == Tuning::Retune {
            return BTreeMap::new();
        }
        std::fs::read(path)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<CacheFile>(&bytes).ok())
            .filter(|f| f.header == self.header)
            .map(|f| f.choices)
            .unwrap_or_default()
    }

    /// Writes the choices (to a temporary file renamed into place, so a reader never sees half a
    /// file). A cache that cannot be written only costs a re-tune next time.
    fn save(&self, choices: &BTreeMap<String, String>) {
        let Some(path) = &self.file else { return };
        let file = CacheFile {
            header: self.header.clone(),
            choices: choices.clone(),
        };
        let Ok(json) = serde_json::to_vec_pretty(&file) else {
            return;
        };
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let tmp = path.with_extension(format!("json.{}.tmp", std::process::id()));
        if std::fs::write(&tmp, json).is_ok() && std::fs::rename(&tmp, path).is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
    }

    /// Times `fitting` (the default first) within the budget, from `started`.
    fn time_candidates<C: Candidate>(
        &self,
        fitting: &[C],
        started: Instant,
        time: &mut impl FnMut(C) -> Result<Duration>,
    ) -> Timed<C> {
        let mut times: Vec<(&'static str, Duration)> = Vec::new();
        let mut skipped: Vec<&'static str> = Vec::new();
        let mut best: Option<(C, Duration)> = None;
        let mut budget = self.budget.floor;
        // What a first run costs beyond a timed run (the pipeline's compile), from the default's.
        let mut compile = Duration::ZERO;
        for (tried, &candidate) in fitting.iter().enumerate() {
            // A candidate is tried only when its expected cost (a first run and the timed runs
            // at the best time so far, plus a compile) fits in what is left of the budget.
            if let Some((_, b)) = best {
                let runs = 1 + timed_runs(b) as u32;
                if started.elapsed() + b * runs + compile > budget {
                    skipped.extend(fitting[tried..].iter().map(|c| c.name()));
                    break;
                }
            }
            let run_started = Instant::now();
            let Ok(first) = time(candidate) else {
                continue;
            };
            let first_wall = run_started.elapsed();
            if tried == 0 {
                budget = self.budget.for_class(first_wall);
            }
            // A first run (compile included) far behind the best says enough about a kernel
            // that suits this adapter badly.
            if best.is_some_and(|(_, b)| first > b * 4) {
                times.push((candidate.name(), first));
                continue;
            }
            let fastest = Self::fastest_run(
                candidate,
                first,
                best.map(|(_, b)| b),
                (started, budget),
                time,
            );
            if fastest == Duration::MAX {
                continue;
            }
            if tried == 0 {
                compile = first_wall.saturating_sub(fastest);
            }
            times.push((candidate.name(), fastest));
            if best.is_none_or(|(_, b)| fastest < b) {
                best = Some((candidate, fastest));
            }
        }
        Timed {
            times,
            skipped,
            best,
            budget,
        }
    }

    /// The fastest of `first` and further timed runs of `candidate`, stopping at the budget or
    /// when it is far behind `best`; `Duration::MAX` when a run fails.
    fn fastest_run<C: Candidate>(
        candidate: C,
        first: Duration,
        best: Option<Duration>,
        deadline: (Instant, Duration),
        time: &mut impl FnMut(C) -> Result<Duration>,
    ) -> Duration {
        let (started, budget) = deadline;
        let mut fastest = first;
        for _ in 0..timed_runs(first) {
            if started.elapsed() + fastest > budget {
                break;
            }
            match time(candidate) {
                Ok(t) => fastest = fastest.min(t),
                Err(_) => return Duration::MAX,
            }
            // Far behind the best: no need for more runs.
            if best.is_some_and(|b| fastest > b * 2) {
                break;
            }
        }
        fastest
    }

    /// The candidate for the shape class `class` names: the forced one, the fixed default (tuning
    /// off, or a problem not `worth_timing`; the class is not named then), the cached choice, or
    /// the fastest of `fitting` as timed now by `time` (which runs one candidate once on inputs of
    /// the class's shape). `fitting[0]` is the fixed default; candidates whose timing fails are
    /// passed over, and if all fail the default is used.
    pub(crate) fn choose<C: Candidate, K: std::fmt::Display>(
        &self,
        class: impl FnOnce() -> K,
        fitting: &[C],
        worth_timing: bool,
        mut time: impl FnMut(C) -> Result<Duration>,
    ) -> C {
        let default = fitting[0];
        let forced = self.forced.lock().ok().and_then(|f| f.get(C::OP).copied());
        if let Some(name) = forced {
            return fitting
                .iter()
                .copied()
                .find(|c| c.name() == name)
                .unwrap_or(default);
        }
        if self.mode == Tuning::Off || fitting.len() == 1 || !worth_timing {
            return default;
        }
        let class = class().to_string();
        let key = format!("{}/{class}", C::OP);
        let cached = |this: &Self| {
            let name = this.with_choices(|c| c.get(&key).cloned())?;
            fitting.iter().copied().find(|c| c.name() == name)
        };
        if let Some(c) = cached(self) {
            return c;
        }
        // One tuning at a time per adapter: candidates timed side by side on two threads would
        // slow each other and skew the choice. A thread already tuning (a conv timing its im2col
        // candidate tunes the matmul inside) goes on without the lock.
        let _turn = if TUNING_HERE.get() {
            None
        } else {
            let guard = self.turn.lock().unwrap_or_else(|p| p.into_inner());
            // Another thread may have tuned this class while this one waited.
            if let Some(c) = cached(self) {
                return c;
            }
            Some(guard)
        };
        let _here = TuningHere::enter();
        // The choices' lock is not held while timing: the candidates may tune nested ops.
        let started = Instant::now();
        let Timed {
            times,
            skipped,
            best,
            budget,
        } = self.time_candidates(fitting, started, &mut time);
        let chosen = best.map_or(default, |(c, _)| c);
        if best.is_some() {
            self.with_choices(|c| {
                c.insert(key.clone(), chosen.name().to_string());
                self.save(c);
            });
        }
        if let Ok(mut t) = self.timings.lock() {
            t.push(TuningRecord {
                op: C::OP,
                class,
                times,
                skipped,
                chosen: chosen.name(),
                took: started.elapsed(),
                budget,
            });
        }
        chosen
    }
}

/// Timed runs after the first: two for runs short enough to be noisy, one past 50 ms, none past
/// 500 ms (where a run's noise is small against its length, and runs are costly).
fn timed_runs(run: Duration) -> usize {
    if run > Duration::from_millis(500) {
        0
    } else if run > Duration::from_millis(50) {
        1
    } else {
        2
    }
}

thread_local! {
    /// Whether this thread is inside a tuning (holds its adapter's turn).
    static TUNING_HERE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Marks this thread as tuning until dropped (restoring the previous state, for nested tunings).
struct TuningHere(bool);

impl TuningHere {
    fn enter() -> Self {
        TuningHere(TUNING_HERE.replace(true))
    }
}

impl Drop for TuningHere {
    fn drop(&mut self) {
        TUNING_HERE.set(self.0);
    }
}

/// `tuning-<adapter>-<backend>.json`, the adapter's name reduced to file-name-safe characters.
fn cache_file_name(h: &CacheHeader) -> String {
    let safe: String = format!("{}-{}", h.adapter, h.backend)
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let mut name = String::new();
    for part in safe.split('-').filter(|p| !p.is_empty()) {
        if !name.is_empty() {
            name.push('-');
        }
        name.push_str(part);
    }
    name.truncate(80);
    format!("tuning-{name}.json")
}

/// `len` values uniform in [-1, 1): the inputs candidates are timed on (never zeros, which some
/// adapters multiply faster).
pub(crate) fn random_inputs(len: usize, seed: u64) -> Vec<f32> {
    use rand::{RngExt, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// The platform's cache directory for wgnn (`$XDG_CACHE_HOME/wgnn` or `~/.cache/wgnn` on Linux,
/// `~/Library/Caches/wgnn` on macOS, `%LOCALAPPDATA%\wgnn` on Windows), if there is one.
pub fn default_cache_dir() -> Option<PathBuf> {
    dirs::cache_dir().map(|d| d.join("wgnn"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Candidates named by a string, for tests.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    struct Fake(&'static str);

    impl Candidate for Fake {
        const OP: &'static str = "fake";
        const ALL: &'static [Self] = &[Fake("a"), Fake("b"), Fake("c")];
        fn name(self) -> &'static str {
            self.0
        }
    }

    /// A second family, for a tuning nested in another.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    struct Inner(&'static str);

    impl Candidate for Inner {
        const OP: &'static str = "inner";
        const ALL: &'static [Self] = &[Inner("x"), Inner("y")];
        fn name(self) -> &'static str {
            self.0
        }
    }

    fn info(driver: &str) -> wgpu::AdapterInfo {
        wgpu::AdapterInfo {
            name: "llvmpipe (LLVM 19.1.7, 256 bits)".into(),
            vendor: 0x10005,
            device: 0,
            device_type: wgpu::DeviceType::Cpu,
            driver: "llvmpipe".into(),
            driver_info: driver.into(),
            backend: wgpu::Backend::Vulkan,
            ..wgpu::AdapterInfo::new(wgpu::DeviceType::Cpu, wgpu::Backend::Vulkan)
        }
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("wgnn-tune-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn file_name_is_safe() {
        let t = Tuner::new(
            &info("Mesa 25"),
            Tuning::Auto,
            TuningBudget::default(),
            Some("/x".into()),
        );
        assert_eq!(
            t.file().unwrap(),
            Path::new("/x/tuning-llvmpipe-llvm-19-1-7-256-bits-vulkan.json")
        );
    }

    #[test]
    fn choices_persist_and_stale_or_corrupt_files_are_ignored() {
        let dir = temp_dir("persist");
        let key = "matmul/f32/x".to_string();
        let fitting = [Fake("a"), Fake("b"), Fake("c")];
        let t = Tuner::new(
            &info("Mesa 25"),
            Tuning::Auto,
            TuningBudget::default(),
            Some(dir.clone()),
        );
        let mut runs = 0;
        let chosen = t.choose(
            || key.clone(),
            &fitting,
            true,
            |c| {
                runs += 1;
                Ok(Duration::from_millis(match c.0 {
                    "a" => 30,
                    "b" => 10,
                    _ => 20,
                }))
            },
        );
        assert_eq!(chosen, Fake("b"));
        assert!(runs >= 3 * (1 + 2) - 1, "{runs} runs");

        // A second tuner for the same adapter reads the choice instead of timing.
        let again = Tuner::new(
            &info("Mesa 25"),
            Tuning::Auto,
            TuningBudget::default(),
            Some(dir.clone()),
        );
        let chosen = again.choose(
            || key.clone(),
            &fitting,
            true,
            |_| panic!("a cached class is not timed again"),
        );
        assert_eq!(chosen, Fake("b"));

        // Another driver version: the file is stale, so the class is tuned anew.
        let other = Tuner::new(
            &info("Mesa 26"),
            Tuning::Auto,
            TuningBudget::default(),
            Some(dir.clone()),
        );
        let mut timed = false;
        let chosen = other.choose(
            || key.clone(),
            &fitting,
            true,
            |c| {
                timed = true;
                Ok(Duration::from_millis(if c.0 == "c" { 1 } else { 5 }))
            },
        );
        assert!(timed);
        assert_eq!(chosen, Fake("c"));

        // A corrupt file is ignored, then replaced by a good one.
        let path = other.file().unwrap().to_path_buf();
        std::fs::write(&path, b"{ not json").unwrap();
        let fresh = Tuner::new(
            &info("Mesa 26"),
            Tuning::Auto,
            TuningBudget::default(),
            Some(dir.clone()),
        );
        let chosen = fresh.choose(
            || key.clone(),
            &fitting,
            true,
            |c| Ok(Duration::from_millis(if c.0 == "a" { 1 } else { 5 })),
        );
        assert_eq!(chosen, Fake("a"));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"fake/matmul/f32/x\": \"a\""), "{text}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn one_tuning_at_a_time_and_nested_tunings_do_not_wait() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let t = Tuner::new(&info("d"), Tuning::Session, TuningBudget::default(), None);
        let key = "class".to_string();
        let calls = AtomicUsize::new(0);
        let tune = || {
            t.choose(
                || key.clone(),
                &[Fake("a"), Fake("b")],
                true,
                |c| {
                    calls.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(5));
                    // A nested op tunes its own class from inside (as conv's im2col runs a matmul).
                    let inner = format!("inner-{}", c.0);
                    t.choose(
                        || inner,
                        &[Inner("x"), Inner("y")],
                        true,
                        |_| Ok(Duration::from_millis(1)),
                    );
                    Ok(Duration::from_millis(if c.0 == "b" { 1 } else { 2 }))
                },
            )
        };
        let (first, second) = std::thread::scope(|s| {
            let a = s.spawn(tune);
            let b = s.spawn(tune);
            (a.join().unwrap(), b.join().unwrap())
        });
        assert_eq!((first, second), (Fake("b"), Fake("b")));
        // One thread timed the class; the other found the choice once its turn came.
        assert_eq!(calls.load(Ordering::SeqCst), 2 * (1 + 2));
        assert_eq!(t.records().iter().filter(|r| r.class == key).count(), 1);
    }

    /// A class's tuning stops at its budget (a multiple of the default's first run): candidates
    /// whose expected cost would pass it are skipped, and the fastest of those tried is kept.
    #[test]
    fn tuning_stops_at_its_budget() {
        let budget = TuningBudget {
            floor: Duration::ZERO,
            relative: 2.5,
            ceiling: Duration::from_secs(10),
        };
        let t = Tuner::new(&info("d"), Tuning::Session, budget, None);
        let mut runs = Vec::new();
        let chosen = t.choose(
            || "big".to_string(),
            &[Fake("a"), Fake("b"), Fake("c")],
            true,
            |c| {
                runs.push(c);
                std::thread::sleep(Duration::from_millis(100));
                Ok(Duration::from_millis(100))
            },
        );
        assert_eq!(chosen, Fake("a"));
        // The default's first run (100 ms) sets a budget of 250 ms: one more run of it fits,
        // another candidate's two runs do not.
        assert_eq!(runs, [Fake("a"), Fake("a")]);
        let record = &t.records()[0];
        assert_eq!(record.skipped, ["b", "c"]);
        assert!(record.budget >= Duration::from_millis(250), "{record:?}");
        // The same candidates, each 1 ms: all are timed within the floor.
        let t = Tuner::new(&info("d"), Tuning::Session, TuningBudget::default(), None);
        let chosen = t.choose(
            || "small".to_string(),
            &[Fake("a"), Fake("b"), Fake("c")],
            true,
            |c| {
                std::thread::sleep(Duration::from_millis(1));
                Ok(Duration::from_millis(if c.0 == "c" { 1 } else { 2 }))
            },
        );
        assert_eq!(chosen, Fake("c"));
        assert!(t.records()[0].skipped.is_empty());
    }

    #[test]
    fn retune_ignores_the_file_and_forget_clears_it() {
        let dir = temp_dir("retune");
        let key = || "k".to_string();
        let fitting = [Fake("a"), Fake("b")];
        let fast = |winner: &'static str| {
            move |c: Fake| Ok(Duration::from_millis(if c.0 == winner { 1 } else { 5 }))
        };
        let t = Tuner::new(
            &info("d"),
            Tuning::Auto,
            TuningBudget::default(),
            Some(dir.clone()),
        );
        assert_eq!(t.choose(key, &fitting, true, fast("a")), Fake("a"));
        let again = Tuner::new(
            &info("d"),
            Tuning::Retune,
            TuningBudget::default(),
            Some(dir.clone()),
        );
        assert_eq!(again.choose(key, &fitting, true, fast("b")), Fake("b"));
        let reader = Tuner::new(
            &info("d"),
            Tuning::Auto,
            TuningBudget::default(),
            Some(dir.clone()),
        );
        assert_eq!(
            reader.choices().get("fake/k").map(String::as_str),
            Some("b")
        );
        reader.forget();
        let fresh = Tuner::new(
            &info("d"),
            Tuning::Auto,
            TuningBudget::default(),
            Some(dir.clone()),
        );
        assert!(fresh.choices().is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn budgets_are_checked() {
        assert!(TuningBudget::default().validate().is_ok());
        assert!(TuningBudget::thorough().validate().is_ok());
        for bad in [
            TuningBudget {
                relative: f64::NAN,
                ..TuningBudget::default()
            },
            TuningBudget {
                relative: -1.0,
                ..TuningBudget::default()
            },
            TuningBudget {
                floor: Duration::from_secs(60),
                ..TuningBudget::default()
            },
            TuningBudget {
                ceiling: Duration::MAX,
                floor: Duration::ZERO,
                ..TuningBudget::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn off_forced_and_failing_candidates() {
        let key = "k".to_string();
        let off = Tuner::new(&info("d"), Tuning::Off, TuningBudget::default(), None);
        assert_eq!(
            off.choose(
                || -> String { panic!("no key is made when off") },
                &[Fake("a"), Fake("b")],
                true,
                |_| panic!("no timing when off")
            ),
            Fake("a")
        );
        let t = Tuner::new(&info("d"), Tuning::Auto, TuningBudget::default(), None);
        t.force(Some(Fake("b")));
        assert_eq!(
            t.choose(
                || key.clone(),
                &[Fake("a"), Fake("b")],
                true,
                |_| panic!("forced")
            ),
            Fake("b")
        );
        // A forced candidate that does not fit falls back to the default.
        assert_eq!(
            t.choose(|| key.clone(), &[Fake("a")], true, |_| panic!()),
            Fake("a")
        );
        t.force::<Fake>(None);
        // A product too small to be worth timing takes the default, without a key.
        assert_eq!(
            t.choose(
                || -> String { panic!("no key") },
                &[Fake("a"), Fake("b")],
                false,
                |_| panic!()
            ),
            Fake("a")
        );
        // A candidate whose run fails is passed over; all failing gives the default.
        let chosen = t.choose(
            || key.clone(),
            &[Fake("a"), Fake("b")],
            true,
            |c| {
                if c.0 == "a" {
                    Err(crate::error::Error::gpu("out of memory"))
                } else {
                    Ok(Duration::from_millis(50))
                }
            },
        );
        assert_eq!(chosen, Fake("b"));
        let key2 = "k2".to_string();
        let chosen = t.choose(
            || key2.clone(),
            &[Fake("a"), Fake("b")],
            true,
            |_| Err(crate::error::Error::gpu("lost")),
        );
        assert_eq!(chosen, Fake("a"));
    }
}
