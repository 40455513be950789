//! The training thread: it owns its device, runs the library trainer and sends its events back
//! over a channel, waking the UI after each. A panic inside training becomes an error message.

use std::any::Any;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, TryRecvError, channel};
use std::thread::JoinHandle;

use sftok_core::train::{StopHandle, TrainConfig, TrainEvent, TrainOutcome, train};
use sftok_core::{DeviceChoice, choose_device};

/// A message from the training thread.
#[derive(Debug)]
pub enum WorkerMsg {
    /// The device chosen, in words.
    Device(String),
    Event(TrainEvent),
    /// The last message: how the run ended.
    Done(Result<TrainOutcome, String>),
}

/// A training running on its own thread.
pub struct Worker {
    rx: Receiver<WorkerMsg>,
    stop: StopHandle,
    thread: Option<JoinHandle<()>>,
    done: bool,
}

impl Worker {
    pub fn spawn(
        config: TrainConfig,
        run_dir: PathBuf,
        resume: bool,
        device: DeviceChoice,
        ctx: egui::Context,
    ) -> Result<Self, String> {
        let (tx, rx) = channel();
        let stop = StopHandle::new();
        let thread_stop = stop.clone();
        let thread = std::thread::Builder::new()
            .name("sftok-train".into())
            .spawn(move || {
                let send = |msg: WorkerMsg| {
                    // The panel may be gone (the app closing): nobody to tell.
                    let _ = tx.send(msg);
                    ctx.request_repaint();
                };
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    let chosen = choose_device(device)
                        .map_err(|e| format!("no device to train on: {e}"))?;
                    send(WorkerMsg::Device(chosen.description.clone()));
                    let mut emit = |event: TrainEvent| send(WorkerMsg::Event(event));
                    train(
                        config,
                        &run_dir,
                        resume,
                        &chosen.device,
                        &mut emit,
                        &thread_stop,
                    )
                    .map_err(|e| super::setup::gui_error(&e))
                }))
                .unwrap_or_else(|panic| {
                    Err(format!(
                        "training crashed: {}. The last checkpoint in {} is intact; Resume continues from it",
                        panic_message(panic.as_ref()),
                        run_dir.display()
                    ))
                });
                send(WorkerMsg::Done(result));
            })
            .map_err(|e| format!("could not start the training thread: {e}"))?;
        Ok(Worker {
            rx,
            stop,
            thread: Some(thread),
            done: false,
        })
    }

    /// Asks the trainer to stop after the current step (it writes a checkpoint first).
    pub fn stop(&self) {
        self.stop.stop();
    }

    pub fn stop_requested(&self) -> bool {
        self.stop.is_stopped()
    }

    /// Every message that arrived since the last call. Ends with a `Done` once the thread ended
    /// (one is made up if the thread died without sending it).
    pub fn drain(&mut self) -> Vec<WorkerMsg> {
        let mut out = Vec::new();
        if self.done {
            return out;
        }
        loop {
            match self.rx.try_recv() {
                Ok(msg) => {
                    let last = matches!(msg, WorkerMsg::Done(_));
                    out.push(msg);
                    if last {
                        self.done = true;
                        break;
                    }
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    out.push(WorkerMsg::Done(Err(
                        "the training thread ended without a result".into(),
                    )));
                    self.done = true;
                    break;
                }
            }
        }
        if self.done
            && let Some(thread) = self.thread.take()
        {
            // It has sent its last message: joining is immediate.
            let _ = thread.join();
        }
        out
    }
}

fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panic_payloads_become_words() {
        let p = std::panic::catch_unwind(|| panic!("boom {}", 1)).unwrap_err();
        assert_eq!(panic_message(p.as_ref()), "boom 1");
        let p = std::panic::catch_unwind(|| std::panic::panic_any(3_u8)).unwrap_err();
        assert_eq!(panic_message(p.as_ref()), "a panic without a message");
    }
}
