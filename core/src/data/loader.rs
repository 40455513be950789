//! The data loader: worker threads that turn positions in a seeded data order into batches, and
//! the trainer-side handle that hands those batches out in order.
//!
//! Work is split by batch: the loader sends "build batch (epoch, k)" jobs to the workers, keeping
//! at most `prefetch_batches + workers` batches in flight, and puts the finished ones back in
//! order. Every random choice is seeded by `(seed, epoch, position)`, so which worker builds which
//! batch, and when, never shows in the output.

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use image::RgbImage;

use super::DataError;
use super::augment::{Crop, full_crop, random_crop};
use super::cache::{ImageCache, SkippedFile};
use super::folder::ImageFolder;
use super::resample::write_square;
use super::rng::{SplitMix64, Stream, permutation};
use crate::image_io::MAX_IMAGE_SIDE;

/// How images become batch items.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// Shorter side resized to `round(image_size * u)` with `u ~ U[1, max_scale]`, a random
    /// `image_size` square crop, and a horizontal flip with p = 0.5 if `flip`.
    /// `max_scale = 1.0` is plain "shorter side to `image_size`, random crop". Runs forever,
    /// epoch after epoch, each in a new seeded order; the last partial batch of an epoch is
    /// dropped so every batch is full.
    Train { max_scale: f32, flip: bool },
    /// Shorter side to `image_size`, centre crop, no randomness; one pass over the files in
    /// sorted order, the last partial batch kept.
    Eval,
}

/// Settings of a [`DataLoader`]. [`LoaderConfig::train`] and [`LoaderConfig::eval`] give
/// defaults to start from: `LoaderConfig { seed: 7, ..LoaderConfig::train(256, 8) }`.
#[derive(Debug, Clone, PartialEq)]
pub struct LoaderConfig {
    /// Side of the square crops, in pixels.
    pub image_size: u32,
    pub batch_size: usize,
    /// Decoding threads (at least 1).
    pub workers: usize,
    /// Finished batches that may wait for the trainer, on top of one being built per worker.
    pub prefetch_batches: usize,
    pub seed: u64,
    pub mode: Mode,
    /// Memory for decoded images. Files that no longer fit are decoded again at every use
    /// (slower, never wrong): the output does not depend on what is cached.
    pub cache_bytes: usize,
}

/// 4 GiB of decoded images: the 281 training photos at 64 px crops and `max_scale` 3 take about
/// 50 MiB; `ImageNet` at 256 px would need about 330 GB, which is why there is a cap at all.
pub const DEFAULT_CACHE_BYTES: usize = 4 << 30;

/// Largest accepted `max_scale`: beyond it crops would be tiny, blurry fragments, and the cache
/// would hold needlessly large images.
const MAX_SCALE_LIMIT: f32 = 16.0;

/// Sanity limits: far above anything useful, low enough that the queues stay allocatable.
const MAX_WORKERS: usize = 256;
const MAX_PREFETCH: usize = 1024;

impl LoaderConfig {
    /// Training defaults: `max_scale` 1 with flips, seed 0, one worker per core (at most 8),
    /// 4 batches of prefetch.
    pub fn train(image_size: u32, batch_size: usize) -> LoaderConfig {
        LoaderConfig {
            image_size,
            batch_size,
            workers: default_workers(),
            prefetch_batches: 4,
            seed: 0,
            mode: Mode::Train {
                max_scale: 1.0,
                flip: true,
            },
            cache_bytes: DEFAULT_CACHE_BYTES,
        }
    }

    /// Evaluation defaults: as [`LoaderConfig::train`] with [`Mode::Eval`].
    pub fn eval(image_size: u32, batch_size: usize) -> LoaderConfig {
        LoaderConfig {
            mode: Mode::Eval,
            ..LoaderConfig::train(image_size, batch_size)
        }
    }

    fn validate(&self) -> Result<(), DataError> {
        let invalid = |detail: String| Err(DataError::InvalidConfig { detail });
        if self.image_size == 0 || self.image_size > MAX_IMAGE_SIDE {
            return invalid(format!(
                "image size {} is out of range (1 to {MAX_IMAGE_SIDE} pixels)",
                self.image_size
            ));
        }
        if self.batch_size == 0 {
            return invalid("the batch size must be at least 1".into());
        }
        if !(1..=MAX_WORKERS).contains(&self.workers) {
            return invalid(format!(
                "{} worker threads asked for; use 1 to {MAX_WORKERS}",
                self.workers
            ));
        }
        if self.prefetch_batches > MAX_PREFETCH {
            return invalid(format!(
                "prefetching {} batches would hold too many in memory; use 0 to {MAX_PREFETCH}",
                self.prefetch_batches
            ));
        }
        if let Mode::Train { max_scale, .. } = self.mode
            && !(1.0..=MAX_SCALE_LIMIT).contains(&max_scale)
        {
            return invalid(format!(
                "max_scale {max_scale} is out of range (1 to {MAX_SCALE_LIMIT}; 1 means no zoom)"
            ));
        }
        Ok(())
    }
}

fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().min(8))
}

/// Where a batch sits in the run: batch `batch` of epoch `epoch`. Store the position after the
/// last trained batch in a checkpoint and start the loader there to resume exactly.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DataPosition {
    pub epoch: u64,
    pub batch: u64,
}

impl DataPosition {
    /// The position after this batch: `batch + 1` in the same epoch. The loader knows how many
    /// batches an epoch has and starts the next epoch when `batch` is past the end, so this can
    /// be stored as is ([`DataLoader::position`] gives the already rolled-over form).
    pub fn next(self) -> DataPosition {
        DataPosition {
            epoch: self.epoch,
            batch: self.batch + 1,
        }
    }
}

/// One batch of images.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// `[batch_size, 3, image_size, image_size]`, row-major: per image the R, G and B planes,
    /// values `u8 / 255` in [0, 1].
    pub pixels: Vec<f32>,
    pub batch_size: usize,
    pub image_size: u32,
    /// The file each image came from.
    pub paths: Vec<PathBuf>,
    /// Where this batch sits in the run.
    pub position: DataPosition,
}

impl Batch {
    /// `[batch_size, 3, image_size, image_size]`, as a tensor shape.
    pub fn shape(&self) -> [usize; 4] {
        let s = self.image_size as usize;
        [self.batch_size, 3, s, s]
    }

    /// The `3 * image_size^2` values of image `i` (panics if `i >= batch_size`, like indexing).
    pub fn image(&self, i: usize) -> &[f32] {
        let s = self.image_size as usize;
        let len = 3 * s * s;
        &self.pixels[i * len..(i + 1) * len]
    }
}

/// Decodes and augments images on worker threads; see the module documentation.
///
/// Dropping it stops the workers (each finishes at most the image it is decoding).
pub struct DataLoader {
    shared: Arc<Shared>,
    jobs: Option<SyncSender<Job>>,
    results: Option<Receiver<Done>>,
    workers: Vec<JoinHandle<()>>,
    plan: Plan,
    /// Jobs sent so far; also the sequence number of the next one.
    issued: u64,
    /// Jobs whose outcome has been handed out (or dropped, for empty eval batches).
    handed_out: u64,
    /// Most jobs in flight or waiting in `ready`: `prefetch_batches + workers`.
    window: u64,
    /// Finished jobs that came back before an earlier one, by sequence number.
    ready: BTreeMap<u64, Outcome>,
    /// Reported again on every call once the loader has failed.
    failure: Option<DataError>,
    handed_out_images: bool,
    position: DataPosition,
}

/// State that the workers share with the loader.
struct Shared {
    root: PathBuf,
    config: LoaderConfig,
    cache: ImageCache,
    stop: AtomicBool,
}

/// "Build the batch at `position`, visiting files in `order`", number `seq` in hand-out order.
struct Job {
    seq: u64,
    position: DataPosition,
    order: Arc<[usize]>,
}

type Outcome = Result<Batch, DataError>;
type Done = (u64, Outcome);

impl DataLoader {
    /// Starts the workers; the first batch returned is the one at `position`
    /// (`DataPosition::default()` for a fresh run).
    ///
    /// Fails on settings that cannot work (zero batch size, ...) or a training folder with
    /// fewer images than one batch; never because of an individual file.
    pub fn start(
        folder: ImageFolder,
        config: LoaderConfig,
        position: DataPosition,
    ) -> Result<DataLoader, DataError> {
        config.validate()?;
        let plan = Plan::new(&folder, &config, position)?;
        let window = (config.prefetch_batches + config.workers) as u64;
        let shared = Arc::new(Shared {
            root: folder.root().to_path_buf(),
            cache: ImageCache::new(
                folder.paths().to_vec(),
                config.mode,
                config.image_size,
                config.cache_bytes,
            ),
            config,
            stop: AtomicBool::new(false),
        });
        let capacity = window as usize;
        let (job_tx, job_rx) = sync_channel::<Job>(capacity);
        let (done_tx, done_rx) = sync_channel::<Done>(capacity);
        let mut loader = DataLoader {
            position: plan.normalize(position),
            shared,
            jobs: Some(job_tx),
            results: Some(done_rx),
            workers: Vec::new(),
            plan,
            issued: 0,
            handed_out: 0,
            window,
            ready: BTreeMap::new(),
            failure: None,
            handed_out_images: false,
        };
        loader.spawn_workers(job_rx, done_tx)?;
        loader.send_jobs();
        Ok(loader)
    }

    /// The next batch, waiting for it if the workers are behind.
    ///
    /// `Ok(None)` only in eval mode, after the last batch; training never ends.
    /// Unreadable files are skipped (see [`DataLoader::skipped`]): in training each is replaced
    /// by the next readable file of the epoch's order so batches stay full; in eval it is left
    /// out (an image counted twice would skew the metrics), so an eval batch can be smaller.
    /// An error means the run cannot go on (e.g. not a single file is readable); it is returned
    /// again on every later call.
    pub fn next_batch(&mut self) -> Result<Option<Batch>, DataError> {
        if let Some(failure) = &self.failure {
            return Err(failure.clone());
        }
        loop {
            self.send_jobs();
            if let Some(outcome) = self.ready.remove(&self.handed_out) {
                self.handed_out += 1;
                match outcome {
                    Ok(batch) if batch.batch_size == 0 => continue,
                    Ok(batch) => return Ok(Some(self.hand_out(batch))),
                    Err(e) => return Err(self.fail(e)),
                }
            }
            if self.handed_out == self.issued {
                return self.end_of_pass();
            }
            match self.results.as_ref().map(Receiver::recv) {
                Some(Ok((seq, outcome))) => {
                    self.ready.insert(seq, outcome);
                }
                _ => return Err(self.fail(DataError::WorkersStopped)),
            }
        }
    }

    /// The files skipped so far (unreadable, corrupt, too small, ...) with the reason, sorted by
    /// path.
    pub fn skipped(&self) -> Vec<SkippedFile> {
        self.shared.cache.skipped()
    }

    /// The position of the next batch [`DataLoader::next_batch`] returns: what a checkpoint
    /// saved now should resume from.
    pub fn position(&self) -> DataPosition {
        self.position
    }

    /// Batches in one epoch (training: full batches only; eval: the last partial one included).
    pub fn batches_per_epoch(&self) -> u64 {
        self.plan.batches_per_epoch
    }

    /// The settings the loader runs with.
    pub fn config(&self) -> &LoaderConfig {
        &self.shared.config
    }

    fn spawn_workers(
        &mut self,
        jobs: Receiver<Job>,
        done: SyncSender<Done>,
    ) -> Result<(), DataError> {
        let jobs = Arc::new(Mutex::new(jobs));
        for i in 0..self.shared.config.workers {
            let (shared, jobs, done) = (Arc::clone(&self.shared), Arc::clone(&jobs), done.clone());
            let handle = std::thread::Builder::new()
                .name(format!("sftok-data-{i}"))
                .spawn(move || worker(&shared, &jobs, &done))
                .map_err(|e| DataError::StartWorkers {
                    detail: e.to_string(),
                })?;
            self.workers.push(handle);
        }
        Ok(())
    }

    /// Keeps up to `window` batches in flight, so the workers stay ahead of the trainer.
    fn send_jobs(&mut self) {
        let Some(jobs) = &self.jobs else { return };
        while self.issued - self.handed_out < self.window {
            let Some((position, order)) = self.plan.take_next() else {
                return;
            };
            let job = Job {
                seq: self.issued,
                position,
                order,
            };
            // The channel holds `window` jobs, so this never blocks; it fails only if every
            // worker is gone, which the next `recv` reports.
            if jobs.send(job).is_err() {
                return;
            }
            self.issued += 1;
        }
    }

    fn hand_out(&mut self, batch: Batch) -> Batch {
        self.handed_out_images = true;
        self.position = self.plan.normalize(batch.position.next());
        batch
    }

    /// End of an eval pass: fine, unless the pass had files but none of them could be read.
    fn end_of_pass(&mut self) -> Result<Option<Batch>, DataError> {
        if self.issued > 0 && !self.handed_out_images {
            return Err(self.fail(self.shared.nothing_readable()));
        }
        Ok(None)
    }

    fn fail(&mut self, error: DataError) -> DataError {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.failure = Some(error.clone());
        error
    }
}

impl Drop for DataLoader {
    /// Tells the workers to stop, closes both channels (a worker waiting for a job or sending a
    /// result wakes up with an error and exits) and waits for them, so no thread outlives the
    /// loader.
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.jobs = None;
        self.results = None;
        for handle in self.workers.drain(..) {
            // A worker that panicked has nothing left to clean up.
            let _ = handle.join();
        }
    }
}

/// Which batches to build, in which order of files.
struct Plan {
    train: bool,
    seed: u64,
    files: usize,
    batches_per_epoch: u64,
    /// The next batch to send to the workers; `None` at the end of an eval pass.
    next: Option<DataPosition>,
    /// The order of the epoch jobs are being sent for, computed once per epoch.
    order: Option<(u64, Arc<[usize]>)>,
}

impl Plan {
    fn new(
        folder: &ImageFolder,
        config: &LoaderConfig,
        start: DataPosition,
    ) -> Result<Plan, DataError> {
        let files = folder.len();
        let train = matches!(config.mode, Mode::Train { .. });
        if train && files < config.batch_size {
            return Err(DataError::TooFewImages {
                root: folder.root().to_path_buf(),
                found: files,
                batch_size: config.batch_size,
            });
        }
        let batches_per_epoch = if train {
            files / config.batch_size
        } else {
            files.div_ceil(config.batch_size)
        } as u64;
        let mut plan = Plan {
            train,
            seed: config.seed,
            files,
            batches_per_epoch,
            next: None,
            order: None,
        };
        plan.next = plan.runnable(plan.normalize(start));
        Ok(plan)
    }

    /// Rolls a training position past the end of its epoch over to the start of the next, so
    /// that `batch.position.next()` can be stored and resumed as is.
    fn normalize(&self, position: DataPosition) -> DataPosition {
        if self.train && position.batch >= self.batches_per_epoch {
            DataPosition {
                epoch: position.epoch + 1,
                batch: 0,
            }
        } else {
            position
        }
    }

    /// `position` if it is a batch to build; eval ends after its single pass.
    fn runnable(&self, position: DataPosition) -> Option<DataPosition> {
        (self.train || position.batch < self.batches_per_epoch).then_some(position)
    }

    fn take_next(&mut self) -> Option<(DataPosition, Arc<[usize]>)> {
        let position = self.next?;
        let order = self.order_of(position.epoch);
        self.next = self.runnable(self.normalize(position.next()));
        Some((position, order))
    }

    /// Training: a new seeded permutation each epoch. Eval: the sorted file order.
    fn order_of(&mut self, epoch: u64) -> Arc<[usize]> {
        match &self.order {
            Some((cached, order)) if *cached == epoch || !self.train => Arc::clone(order),
            _ => {
                let order: Arc<[usize]> = if self.train {
                    permutation(self.files, self.seed, epoch).into()
                } else {
                    (0..self.files).collect()
                };
                self.order = Some((epoch, Arc::clone(&order)));
                order
            }
        }
    }
}

impl Shared {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn nothing_readable(&self) -> DataError {
        let example = self
            .cache
            .skipped()
            .into_iter()
            .next()
            .map_or_else(|| "no reason recorded".to_string(), |s| s.reason);
        DataError::NothingReadable {
            root: self.root.clone(),
            count: self.cache.len(),
            example,
        }
    }
}

/// A worker: builds the batches it is sent until the loader closes the channels or says stop.
fn worker(shared: &Shared, jobs: &Mutex<Receiver<Job>>, done: &SyncSender<Done>) {
    loop {
        let job = {
            let jobs = jobs.lock().unwrap_or_else(PoisonError::into_inner);
            match jobs.recv() {
                Ok(job) => job,
                Err(_) => return,
            }
        };
        // A bug must not leave the loader waiting forever for this batch: report it instead.
        let outcome = catch_unwind(AssertUnwindSafe(|| build_batch(shared, &job)))
            .unwrap_or(Some(Err(DataError::WorkersStopped)));
        let Some(outcome) = outcome else {
            return;
        };
        if done.send((job.seq, outcome)).is_err() {
            return;
        }
    }
}

/// The batch a job asks for; `None` if the loader was stopped meanwhile.
fn build_batch(shared: &Shared, job: &Job) -> Option<Outcome> {
    match shared.config.mode {
        Mode::Train { max_scale, flip } => build_train_batch(shared, job, max_scale, flip),
        Mode::Eval => build_eval_batch(shared, job),
    }
}

/// `batch_size` consecutive items of the epoch's order. Item `slot` takes its crop from the
/// generator seeded by `(seed, epoch, slot)` and, if its file is unreadable, the next readable
/// file of the order: both depend only on the files, never on timing.
fn build_train_batch(shared: &Shared, job: &Job, max_scale: f32, flip: bool) -> Option<Outcome> {
    let config = &shared.config;
    let mut batch = BatchBuilder::new(config.batch_size, config.image_size);
    let first_slot = job.position.batch * config.batch_size as u64;
    for slot in first_slot..first_slot + config.batch_size as u64 {
        let (index, image) = match find_readable(shared, &job.order, slot) {
            Search::Found(index, image) => (index, image),
            Search::Stopped => return None,
            Search::NoneReadable => return Some(Err(shared.nothing_readable())),
        };
        let mut rng = SplitMix64::derive(config.seed, Stream::Item, job.position.epoch, slot);
        let (w, h) = image.dimensions();
        let crop = random_crop(w, h, config.image_size, max_scale, flip, &mut rng);
        batch.push(&image, crop, shared.cache.path(index));
    }
    Some(Ok(batch.finish(job.position)))
}

/// Up to `batch_size` files in sorted order, centre-cropped; unreadable ones are left out.
fn build_eval_batch(shared: &Shared, job: &Job) -> Option<Outcome> {
    let config = &shared.config;
    let mut batch = BatchBuilder::new(config.batch_size, config.image_size);
    let first = job.position.batch as usize * config.batch_size;
    let end = (first + config.batch_size).min(job.order.len());
    for &index in &job.order[first..end] {
        if shared.stopped() {
            return None;
        }
        if let Ok(image) = shared.cache.get(index) {
            let (w, h) = image.dimensions();
            batch.push(&image, full_crop(w, h), shared.cache.path(index));
        }
    }
    Some(Ok(batch.finish(job.position)))
}

enum Search {
    Found(usize, Arc<RgbImage>),
    Stopped,
    NoneReadable,
}

/// The first readable file at or after `slot` in `order`, wrapping around once.
fn find_readable(shared: &Shared, order: &[usize], slot: u64) -> Search {
    let n = order.len();
    let start = (slot % n as u64) as usize;
    for k in 0..n {
        if shared.stopped() {
            return Search::Stopped;
        }
        let index = order[(start + k) % n];
        if let Ok(image) = shared.cache.get(index) {
            return Search::Found(index, image);
        }
    }
    Search::NoneReadable
}

/// Accumulates the planar pixels and paths of one batch.
struct BatchBuilder {
    pixels: Vec<f32>,
    paths: Vec<PathBuf>,
    size: u32,
    item_len: usize,
}

impl BatchBuilder {
    fn new(capacity: usize, size: u32) -> BatchBuilder {
        let item_len = 3 * size as usize * size as usize;
        BatchBuilder {
            pixels: Vec::with_capacity(capacity * item_len),
            paths: Vec::with_capacity(capacity),
            size,
            item_len,
        }
    }

    fn push(&mut self, image: &RgbImage, crop: Crop, path: &Path) {
        let start = self.pixels.len();
        self.pixels.resize(start + self.item_len, 0.0);
        let square = (crop.x, crop.y, crop.side);
        write_square(
            image,
            square,
            self.size,
            crop.flip,
            &mut self.pixels[start..],
        );
        self.paths.push(path.to_path_buf());
    }

    fn finish(self, position: DataPosition) -> Batch {
        Batch {
            batch_size: self.paths.len(),
            pixels: self.pixels,
            image_size: self.size,
            paths: self.paths,
            position,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::data::testutil::{TempDir, encoded, pattern, planar, write_image, write_png};
    use crate::image_io::{center_crop_resize, load_rgb};

    /// Runs `f` on its own thread and fails the test if it takes longer than `seconds`, so a
    /// hanging loader shows up as a failure instead of a stuck test run.
    fn within<T: Send + 'static>(seconds: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(Duration::from_secs(seconds))
            .expect("the loader hung (or the test thread panicked)")
    }

    fn train_config(size: u32, batch: usize, workers: usize, max_scale: f32) -> LoaderConfig {
        LoaderConfig {
            workers,
            prefetch_batches: 2,
            seed: 42,
            mode: Mode::Train {
                max_scale,
                flip: true,
            },
            ..LoaderConfig::train(size, batch)
        }
    }

    fn start(dir: &Path, config: &LoaderConfig, position: DataPosition) -> DataLoader {
        let folder = ImageFolder::scan(dir).unwrap();
        DataLoader::start(folder, config.clone(), position).unwrap()
    }

    fn take(loader: &mut DataLoader, n: usize) -> Vec<Batch> {
        (0..n)
            .map(|_| loader.next_batch().unwrap().unwrap())
            .collect()
    }

    /// `count` PNG files with different sizes and aspect ratios, all larger than 32 px.
    fn photo_folder(tag: &str, count: usize) -> TempDir {
        let dir = TempDir::new(tag);
        for i in 0..count {
            let (w, h) = (40 + 13 * (i as u32 % 5), 36 + 9 * (i as u32 % 4));
            write_png(&dir.path().join(format!("img{i:02}.png")), w, h, i as u8);
        }
        dir
    }

    #[test]
    fn eval_is_the_exact_centre_crop_in_sorted_order() {
        let dir = TempDir::new("eval");
        // 32x16 with R = x: the centre 16x16 square starts at x = 8 and needs no resizing.
        let exact = RgbImage::from_fn(32, 16, |x, y| image::Rgb([x as u8, y as u8, 200]));
        write_image(&dir.path().join("a.png"), &exact, image::ImageFormat::Png);
        write_png(&dir.path().join("b.png"), 50, 30, 1);
        write_png(&dir.path().join("c/d.png"), 23, 61, 2);
        write_png(&dir.path().join("e.png"), 16, 16, 3);
        write_png(&dir.path().join("f.png"), 120, 90, 4);
        let config = LoaderConfig::eval(16, 2);
        let mut loader = start(dir.path(), &config, DataPosition::default());
        assert_eq!(loader.batches_per_epoch(), 3);
        let batches = take(&mut loader, 3);
        assert_eq!(loader.next_batch().unwrap(), None);
        assert_eq!(loader.next_batch().unwrap(), None, "stays finished");

        assert_eq!(
            batches.iter().map(|b| b.batch_size).collect::<Vec<_>>(),
            [2, 2, 1]
        );
        let first = batches[0].image(0);
        assert_eq!(first[0], 8.0 / 255.0, "R of the top-left pixel is x = 8");
        assert_eq!(first[15], 23.0 / 255.0);
        assert_eq!(first[256 + 16], 1.0 / 255.0, "G of pixel (0, 1) is y = 1");
        assert_eq!(first[512], 200.0 / 255.0);

        let paths: Vec<&PathBuf> = batches.iter().flat_map(|b| &b.paths).collect();
        let folder = ImageFolder::scan(dir.path()).unwrap();
        assert_eq!(paths, folder.paths().iter().collect::<Vec<_>>());
        for (b, batch) in batches.iter().enumerate() {
            assert_eq!(
                batch.position,
                DataPosition {
                    epoch: 0,
                    batch: b as u64
                }
            );
            assert_eq!(batch.shape(), [batch.batch_size, 3, 16, 16]);
            for (i, path) in batch.paths.iter().enumerate() {
                let expected = center_crop_resize(&load_rgb(path).unwrap(), 16).0;
                assert_eq!(
                    batch.image(i),
                    planar(&expected).as_slice(),
                    "{}",
                    path.display()
                );
            }
        }
    }

    #[test]
    fn train_crops_vary_but_repeat_for_the_same_seed_and_any_worker_count() {
        let dir = TempDir::new("train");
        // Identical pictures: any difference between items comes from the augmentation.
        for i in 0..12 {
            write_png(&dir.path().join(format!("same{i:02}.png")), 60, 48, 9);
        }
        let config = train_config(16, 4, 1, 2.0);
        let reference = take(&mut start(dir.path(), &config, DataPosition::default()), 8);
        let again = take(&mut start(dir.path(), &config, DataPosition::default()), 8);
        assert_eq!(reference, again);
        let three = LoaderConfig {
            workers: 3,
            ..config.clone()
        };
        assert_eq!(
            reference,
            take(&mut start(dir.path(), &three, DataPosition::default()), 8)
        );

        let items: Vec<&[f32]> = reference
            .iter()
            .flat_map(|b| (0..4).map(|i| b.image(i)))
            .collect();
        let distinct = items
            .iter()
            .enumerate()
            .filter(|(i, a)| items[..*i].iter().all(|b| b != *a))
            .count();
        assert!(distinct >= 28, "only {distinct} of 32 crops differ");
        assert!(
            reference
                .iter()
                .all(|b| b.batch_size == 4 && b.pixels.len() == 4 * 3 * 256)
        );
        assert!(
            reference
                .iter()
                .flat_map(|b| &b.pixels)
                .all(|v| (0.0..=1.0).contains(v))
        );
        // 12 files, batches of 4: 3 batches an epoch, and every file once per epoch.
        assert_eq!(reference[3].position, DataPosition { epoch: 1, batch: 0 });
        let mut epoch0: Vec<&PathBuf> = reference[..3].iter().flat_map(|b| &b.paths).collect();
        epoch0.sort();
        epoch0.dedup();
        assert_eq!(epoch0.len(), 12);

        let other_seed = LoaderConfig { seed: 43, ..config };
        assert_ne!(
            reference,
            take(
                &mut start(dir.path(), &other_seed, DataPosition::default()),
                8
            )
        );
    }

    #[test]
    fn resuming_from_a_position_equals_an_uninterrupted_run() {
        let dir = photo_folder("resume", 10);
        // 10 files, batches of 3: 3 full batches an epoch, the 10th file's slot is dropped.
        let config = train_config(16, 3, 2, 1.5);
        let mut run = start(dir.path(), &config, DataPosition::default());
        assert_eq!(run.batches_per_epoch(), 3);
        let full = take(&mut run, 9);
        assert_eq!(full[2].position, DataPosition { epoch: 0, batch: 2 });
        assert_eq!(full[3].position, DataPosition { epoch: 1, batch: 0 });
        assert_eq!(run.position(), DataPosition { epoch: 3, batch: 0 });
        assert_ne!(full[0].paths, full[3].paths, "each epoch has its own order");

        let resume_at = DataPosition { epoch: 1, batch: 2 };
        let resumed = take(&mut start(dir.path(), &config, resume_at), 4);
        assert_eq!(resumed, full[5..9]);

        // What a checkpoint after the last batch of epoch 0 stores: `position.next()`.
        let after_epoch = full[2].position.next();
        assert_eq!(after_epoch, DataPosition { epoch: 0, batch: 3 });
        let mut rolled = start(dir.path(), &config, after_epoch);
        assert_eq!(rolled.position(), DataPosition { epoch: 1, batch: 0 });
        assert_eq!(take(&mut rolled, 1)[0], full[3]);
    }

    /// A folder of 8 good images plus one of each kind of bad file, sorted by name.
    fn folder_with_bad_files(tag: &str) -> (TempDir, Vec<PathBuf>) {
        let dir = photo_folder(tag, 8);
        let png = encoded(&pattern(40, 40, 1), image::ImageFormat::Png);
        let jpeg = encoded(&pattern(40, 40, 2), image::ImageFormat::Jpeg);
        let noise: Vec<u8> = (0..3000u32)
            .map(|i| i.wrapping_mul(2654435761) as u8)
            .collect();
        let bad = [
            ("corrupt.jpg", noise),
            ("cut.jpg", jpeg[..jpeg.len() / 2].to_vec()),
            ("notes.webp", b"this is text, not a picture".to_vec()),
            (
                "tiny.png",
                encoded(&pattern(4, 4, 0), image::ImageFormat::Png),
            ),
            ("truncated.png", png[..png.len() / 2].to_vec()),
        ];
        let paths = bad.map(|(name, bytes)| {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            path
        });
        (dir, paths.to_vec())
    }

    #[test]
    fn unreadable_files_are_skipped_and_listed_while_batches_stay_full() {
        let (dir, bad) = folder_with_bad_files("bad");
        let config = train_config(16, 4, 2, 1.0);
        let mut loader = start(dir.path(), &config, DataPosition::default());
        // 13 files: 3 batches an epoch; 6 epochs try every file of the order.
        let batches = take(&mut loader, 18);
        for batch in &batches {
            assert_eq!(batch.batch_size, 4);
            assert_eq!(batch.pixels.len(), 4 * 3 * 16 * 16);
            assert!(
                batch.paths.iter().all(|p| !bad.contains(p)),
                "{:?}",
                batch.paths
            );
        }
        let skipped = loader.skipped();
        assert_eq!(
            skipped.iter().map(|s| &s.path).collect::<Vec<_>>(),
            bad.iter().collect::<Vec<_>>()
        );
        assert!(skipped.iter().all(|s| !s.reason.is_empty()));
        assert!(
            skipped[1].reason.contains("stops before its end"),
            "{}",
            skipped[1].reason
        );
        assert!(skipped[3].reason.contains("4x4"), "{}", skipped[3].reason);

        // The replacements are part of the deterministic output, too.
        let three = LoaderConfig {
            workers: 3,
            ..config
        };
        assert_eq!(
            batches,
            take(&mut start(dir.path(), &three, DataPosition::default()), 18)
        );

        // Eval leaves them out instead: each readable image exactly once.
        let mut eval = start(
            dir.path(),
            &LoaderConfig::eval(16, 5),
            DataPosition::default(),
        );
        let mut seen = Vec::new();
        while let Some(batch) = eval.next_batch().unwrap() {
            seen.extend(batch.paths);
        }
        assert_eq!(seen.len(), 8);
        assert!(seen.iter().all(|p| !bad.contains(p)));
        assert_eq!(eval.skipped().len(), 5);
    }

    #[test]
    fn a_folder_of_only_unreadable_files_is_an_error_not_a_hang() {
        let dir = TempDir::new("allbad");
        for i in 0..6 {
            std::fs::write(
                dir.path().join(format!("broken{i}.jpg")),
                format!("junk {i}"),
            )
            .unwrap();
        }
        let root = dir.path().to_path_buf();
        let (train, eval) = within(30, move || {
            let mut train = start(&root, &train_config(16, 2, 2, 1.0), DataPosition::default());
            let mut eval = start(&root, &LoaderConfig::eval(16, 2), DataPosition::default());
            let train = (train.next_batch(), train.next_batch());
            (train, eval.next_batch())
        });
        let error = train.0.unwrap_err();
        assert!(
            matches!(error, DataError::NothingReadable { count: 6, .. }),
            "{error}"
        );
        assert!(
            error.to_string().contains("none of the 6 images"),
            "{error}"
        );
        assert!(error.to_string().contains("not an image"), "{error}");
        assert_eq!(train.1.unwrap_err(), error, "the failure is reported again");
        assert!(
            matches!(eval, Err(DataError::NothingReadable { .. })),
            "{eval:?}"
        );
    }

    #[test]
    fn dropping_the_loader_does_not_hang() {
        let dir = TempDir::new("drop");
        for i in 0..24 {
            write_png(&dir.path().join(format!("big{i:02}.png")), 900, 700, i);
        }
        let root = dir.path().to_path_buf();
        within(60, move || {
            let config = LoaderConfig {
                prefetch_batches: 8,
                ..train_config(32, 2, 3, 2.0)
            };
            drop(start(&root, &config, DataPosition::default()));
            let mut loader = start(&root, &config, DataPosition::default());
            loader.next_batch().unwrap().unwrap();
            drop(loader);
        });
    }

    #[test]
    fn output_does_not_depend_on_the_cache_budget() {
        let dir = photo_folder("budget", 6);
        let cached = train_config(16, 2, 2, 2.0);
        let uncached = LoaderConfig {
            cache_bytes: 0,
            ..cached.clone()
        };
        let some = LoaderConfig {
            cache_bytes: 10_000,
            ..cached.clone()
        };
        let reference = take(&mut start(dir.path(), &cached, DataPosition::default()), 9);
        assert_eq!(
            reference,
            take(
                &mut start(dir.path(), &uncached, DataPosition::default()),
                9
            )
        );
        assert_eq!(
            reference,
            take(&mut start(dir.path(), &some, DataPosition::default()), 9)
        );
    }

    #[test]
    fn settings_that_cannot_work_are_refused() {
        let dir = photo_folder("config", 3);
        let folder = ImageFolder::scan(dir.path()).unwrap();
        let try_start = |config: LoaderConfig| {
            DataLoader::start(folder.clone(), config, DataPosition::default()).err()
        };
        let base = train_config(16, 2, 1, 1.0);
        for bad in [
            LoaderConfig {
                batch_size: 0,
                ..base.clone()
            },
            LoaderConfig {
                workers: 0,
                ..base.clone()
            },
            LoaderConfig {
                prefetch_batches: usize::MAX,
                ..base.clone()
            },
            LoaderConfig {
                image_size: 0,
                ..base.clone()
            },
            LoaderConfig {
                mode: Mode::Train {
                    max_scale: 0.5,
                    flip: false,
                },
                ..base.clone()
            },
            LoaderConfig {
                mode: Mode::Train {
                    max_scale: f32::NAN,
                    flip: false,
                },
                ..base.clone()
            },
        ] {
            assert!(matches!(
                try_start(bad),
                Some(DataError::InvalidConfig { .. })
            ));
        }
        let e = try_start(LoaderConfig {
            batch_size: 4,
            ..base.clone()
        })
        .unwrap();
        assert!(
            matches!(
                e,
                DataError::TooFewImages {
                    found: 3,
                    batch_size: 4,
                    ..
                }
            ),
            "{e}"
        );
        // Eval may have fewer files than a batch: one small batch.
        let mut eval =
            DataLoader::start(folder, LoaderConfig::eval(16, 4), DataPosition::default()).unwrap();
        assert_eq!(eval.next_batch().unwrap().unwrap().batch_size, 3);
    }

    /// Not a correctness test: `cargo test --release -- --ignored --nocapture throughput`
    /// prints how fast the loader serves the project's training photos once they are cached.
    #[test]
    #[ignore]
    fn throughput_on_the_training_photos() {
        let root = std::env::var("SFTOK_TRAIN_DIR").unwrap_or("/work/shared/data/train".into());
        let folder = match ImageFolder::scan(Path::new(&root)) {
            Ok(folder) => folder,
            Err(e) => return eprintln!("skipped: {e}"),
        };
        let workers = std::env::var("SFTOK_WORKERS")
            .ok()
            .and_then(|w| w.parse().ok())
            .unwrap_or(2);
        let config = train_config(64, 32, workers, 3.0);
        let files = folder.len();
        let mut loader = DataLoader::start(folder, config, DataPosition::default()).unwrap();
        let per_epoch = loader.batches_per_epoch() as usize;
        // Four epochs decode (nearly surely) every file: each drops a different partial batch.
        let cold = Instant::now();
        take(&mut loader, 4 * per_epoch);
        let cold = cold.elapsed();
        let warm = Instant::now();
        let batches = take(&mut loader, 16 * per_epoch);
        let warm = warm.elapsed();
        let images: usize = batches.iter().map(|b| b.batch_size).sum();
        println!(
            "{files} files, {workers} workers, 64 px, max_scale 3: first 4 epochs (decoding) {:.2} s; \
             cached: {images} images in {:.2} s = {:.0} images/s; {} skipped",
            cold.as_secs_f64(),
            warm.as_secs_f64(),
            images as f64 / warm.as_secs_f64(),
            loader.skipped().len()
        );
    }
}
