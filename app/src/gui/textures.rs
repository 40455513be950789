//! Traces with their textures. A trace's images are uploaded once, the first time a view shows
//! them; afterwards scrubbing only picks a handle.

use std::collections::HashMap;
use std::sync::Arc;

use egui::{TextureHandle, TextureOptions};
use image::RgbImage;

use super::gallery::rgb_to_color_image;
use super::model_worker::{Slot, TraceKey};
use super::trace_data::TraceData;

pub struct TraceTextures {
    pub original: TextureHandle,
    /// One per step.
    pub steps: Vec<TextureHandle>,
    pub teacher: Option<TextureHandle>,
}

pub struct CachedTrace {
    /// Shared, so that a view can hold it while it also changes the app (cloning is a count).
    pub data: Arc<TraceData>,
    textures: Option<TraceTextures>,
}

impl CachedTrace {
    pub fn textures(&mut self, ctx: &egui::Context) -> &TraceTextures {
        let data = &self.data;
        self.textures.get_or_insert_with(|| {
            let load = |name: String, im: &RgbImage| {
                ctx.load_texture(name, rgb_to_color_image(im), TextureOptions::NEAREST)
            };
            TraceTextures {
                original: load("original".into(), &data.original),
                steps: data
                    .steps
                    .iter()
                    .enumerate()
                    .map(|(i, s)| load(format!("step-{i}"), &s.image))
                    .collect(),
                teacher: data.teacher.as_ref().map(|t| load("teacher".into(), t)),
            }
        })
    }
}

/// Every trace computed in this session, by slot and key; pending requests are remembered so a
/// trace is asked for once.
#[derive(Default)]
pub struct TraceCache {
    traces: HashMap<(Slot, TraceKey), CachedTrace>,
    pending: HashMap<(Slot, TraceKey), ()>,
    /// Keys whose reconstruction failed, with the message (not retried until the model changes).
    failed: HashMap<(Slot, TraceKey), String>,
}

impl TraceCache {
    pub fn get_mut(&mut self, slot: Slot, key: &TraceKey) -> Option<&mut CachedTrace> {
        self.traces.get_mut(&(slot, key.clone()))
    }

    pub fn contains(&self, slot: Slot, key: &TraceKey) -> bool {
        self.traces.contains_key(&(slot, key.clone()))
    }

    pub fn is_pending(&self, slot: Slot, key: &TraceKey) -> bool {
        self.pending.contains_key(&(slot, key.clone()))
    }

    pub fn failure(&self, slot: Slot, key: &TraceKey) -> Option<&String> {
        self.failed.get(&(slot, key.clone()))
    }

    /// Marks a request as sent; false when it was already sent, cached or failed.
    pub fn mark_pending(&mut self, slot: Slot, key: &TraceKey) -> bool {
        let k = (slot, key.clone());
        if self.traces.contains_key(&k)
            || self.pending.contains_key(&k)
            || self.failed.contains_key(&k)
        {
            return false;
        }
        self.pending.insert(k, ());
        true
    }

    pub fn insert(&mut self, slot: Slot, key: TraceKey, data: TraceData) {
        self.pending.remove(&(slot, key.clone()));
        self.traces.insert(
            (slot, key),
            CachedTrace {
                data: Arc::new(data),
                textures: None,
            },
        );
    }

    pub fn fail(&mut self, slot: Slot, key: TraceKey, message: String) {
        self.pending.remove(&(slot, key.clone()));
        self.failed.insert((slot, key), message);
    }

    /// Forgets everything of a slot (its model changed).
    pub fn clear_slot(&mut self, slot: Slot) {
        self.traces.retain(|(s, _), _| *s != slot);
        self.pending.retain(|(s, _), _| *s != slot);
        self.failed.retain(|(s, _), _| *s != slot);
    }

    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }
}
