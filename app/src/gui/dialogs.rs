//! Native file dialogs (rfd), with a message when none can be shown.
//!
//! On a Linux desktop without an XDG desktop portal or zenity, rfd returns "nothing picked" at
//! once and shows nothing: the buttons looked dead (issue 18). A dialog that a person cancelled
//! was open for a while; one that returns within a blink was never shown.

use std::time::{Duration, Instant};

/// What to tell the user when no dialog could be shown.
pub const NO_DIALOG: &str = "No file dialog could be shown on this desktop (it needs an XDG desktop portal or zenity: `apt install zenity`). Type the path in the row that opened below the buttons, or drag and drop images or folders onto the window.";

/// Runs a dialog: `Ok(None)` when the person cancelled, `Err` when no dialog appeared.
pub fn run<T>(show: impl FnOnce() -> Option<T>) -> Result<Option<T>, String> {
    let started = Instant::now();
    let picked = show();
    if picked.is_none() && started.elapsed() < Duration::from_millis(250) {
        return Err(NO_DIALOG.to_string());
    }
    Ok(picked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instant_nothing_is_no_dialog_and_a_slow_one_a_cancel() {
        assert!(run(|| None::<u8>).is_err());
        assert_eq!(run(|| Some(3)), Ok(Some(3)));
        let cancelled = run(|| {
            std::thread::sleep(Duration::from_millis(300));
            None::<u8>
        });
        assert_eq!(cancelled, Ok(None));
    }
}
