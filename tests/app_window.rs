//! The real `sftok` binary under Xvfb: it opens its window, reconstructs the first image, and a
//! screenshot of the display (ImageMagick `import`) is not blank. One screenshot per view.
//!
//! Needs `Xvfb` and `import` (Debian: xvfb, imagemagick; `.ci/run` installs them and sets
//! `SFTOK_REQUIRE_DISPLAY=1`, so there the test cannot skip). Set `SFTOK_SCREENSHOT_DIR` to keep
//! the screenshots (the README's come from here).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::channel;
use std::time::{Duration, Instant};

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// Xvfb, stopped with SIGTERM so that it removes its socket and lock file (a killed server leaves
/// them behind, and the next server on that display number refuses to start).
struct Xvfb(Child);

impl Drop for Xvfb {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        let _ = self.0.wait();
    }
}

/// Starts Xvfb on the first display number that has neither a lock file nor a socket.
fn start_xvfb() -> (Xvfb, u32) {
    let display = (90..400)
        .find(|n| {
            !Path::new(&format!("/tmp/.X{n}-lock")).exists()
                && !Path::new(&format!("/tmp/.X11-unix/X{n}")).exists()
        })
        .expect("a free X display number");
    let mut child = Command::new("Xvfb")
        .arg(format!(":{display}"))
        .args(["-screen", "0", "1400x1000x24", "-nolisten", "tcp"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting Xvfb");
    let socket = PathBuf::from(format!("/tmp/.X11-unix/X{display}"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !socket.exists() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "Xvfb exited on :{display}"
        );
        assert!(
            Instant::now() < deadline,
            "Xvfb did not start on :{display}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    (Xvfb(child), display)
}

/// Starts the app on `view`, waits for `ready` on its stderr, and takes a screenshot.
fn screenshot(
    display: u32,
    home: &Path,
    view: &str,
    window: Option<&str>,
    ready: &str,
    out: &Path,
) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sftok"))
        .args(["app", "--view", view])
        .args(window.map(|w| ["--window", w]).into_iter().flatten())
        .env("DISPLAY", format!(":{display}"))
        .env("HOME", home)
        .env("XDG_DATA_HOME", home.join("data"))
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env("XDG_RUNTIME_DIR", home)
        .env_remove("WAYLAND_DISPLAY")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting sftok");
    let stderr = child.stderr.take().unwrap();
    let app = KillOnDrop(child);
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut log = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left.max(Duration::from_millis(1))) {
            Ok(line) => {
                let hit = line.contains(ready);
                log.push(line);
                if hit {
                    break;
                }
            }
            Err(_) => panic!(
                "the app did not print {ready:?} within 300 s; its stderr:\n{}",
                log.join("\n")
            ),
        }
    }
    // Let a few frames show the result.
    std::thread::sleep(Duration::from_secs(3));
    let status = Command::new("import")
        .args(["-window", "root"])
        .arg(out)
        .env("DISPLAY", format!(":{display}"))
        .status()
        .expect("running import");
    assert!(status.success(), "import failed");
    drop(app);
    // The display is larger than the window, which sits at its top-left corner (no window
    // manager): keep the window only.
    let (w, h) = window
        .and_then(|w| w.split_once('x'))
        .map_or((1280, 820), |(w, h)| {
            (w.parse().unwrap(), h.parse().unwrap())
        });
    let shot = image::open(out).unwrap().to_rgb8();
    let w = w.min(shot.width());
    let h = h.min(shot.height());
    image::imageops::crop_imm(&shot, 0, 0, w, h)
        .to_image()
        .save(out)
        .unwrap();
}

/// A screenshot is "not blank" when it has many colours and real contrast.
fn assert_not_blank(path: &Path) {
    let shot = image::open(path).unwrap().to_rgb8();
    let mut colours = std::collections::HashSet::new();
    let (mut sum, mut sum_sq, mut n) = (0f64, 0f64, 0f64);
    for p in shot.pixels() {
        colours.insert(p.0);
        let l = (p[0] as f64 + p[1] as f64 + p[2] as f64) / 3.0;
        sum += l;
        sum_sq += l * l;
        n += 1.0;
    }
    let std = (sum_sq / n - (sum / n).powi(2)).sqrt();
    assert!(
        colours.len() > 200 && std > 10.0,
        "{} looks blank: {} colours, luminance std {std:.1}",
        path.display(),
        colours.len()
    );
}

#[test]
fn the_app_window_shows_each_view() {
    if !(on_path("Xvfb") && on_path("import")) {
        assert!(
            std::env::var_os("SFTOK_REQUIRE_DISPLAY").is_none(),
            "SFTOK_REQUIRE_DISPLAY is set but Xvfb or ImageMagick's import is missing"
        );
        eprintln!("skipped: needs Xvfb and ImageMagick's import");
        return;
    }
    let (_xvfb, display) = start_xvfb();
    let home = std::env::temp_dir().join(format!("sftok-window-{}", std::process::id()));
    std::fs::create_dir_all(&home).unwrap();
    let keep = std::env::var_os("SFTOK_SCREENSHOT_DIR").map(PathBuf::from);
    // The default window, and the small one a laptop gives.
    for (window, suffix) in [(None, ""), (Some("1000x700"), "-1000x700")] {
        for (view, ready) in [
            ("reconstruct", "first reconstruction ready"),
            ("compare", "first reconstruction ready"),
            ("generate", "first generation ready"),
            ("train", "model B loaded"),
        ] {
            let name = format!("{view}{suffix}.png");
            let out = home.join(&name);
            screenshot(display, &home, view, window, ready, &out);
            assert_not_blank(&out);
            if let Some(dir) = &keep {
                std::fs::create_dir_all(dir).unwrap();
                std::fs::copy(&out, dir.join(&name)).unwrap();
            }
        }
    }
}
