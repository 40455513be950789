//! Traces with their textures. A trace's images are uploaded once, the first time a view shows
//! them (an image that arrives later, when the worker has decoded it, on the next frame);
//! afterwards scrubbing only picks a handle.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use egui::{TextureHandle, TextureOptions};
use image::RgbImage;

use super::gallery::rgb_to_color_image;
use super::model_worker::{Slot, TraceKey};
use super::trace_data::TraceData;

#[derive(Clone)]
pub struct TraceTextures {
    pub original: TextureHandle,
    /// One per step; `None` while that step's image is being decoded.
    pub steps: Vec<Option<TextureHandle>>,
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
        let load = |name: String, im: &RgbImage| {
            ctx.load_texture(name, rgb_to_color_image(im), TextureOptions::NEAREST)
        };
        let textures = self.textures.get_or_insert_with(|| TraceTextures {
            original: load("original".into(), &data.original),
            steps: vec![None; data.steps.len()],
            teacher: None,
        });
        // Upload what arrived since the last frame (nothing is ever replaced, only added).
        for (i, (texture, step)) in textures.steps.iter_mut().zip(&data.steps).enumerate() {
            if texture.is_none()
                && let Some(image) = &step.image
            {
                *texture = Some(load(format!("step-{i}"), image));
            }
        }
        if textures.teacher.is_none()
            && let Some(t) = &data.teacher
        {
            textures.teacher = Some(load("teacher".into(), t));
        }
        textures
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
    /// Steps whose image the worker was asked to decode first.
    preferred: HashSet<(Slot, TraceKey, usize)>,
}

impl TraceCache {
    pub fn get(&self, slot: Slot, key: &TraceKey) -> Option<&CachedTrace> {
        self.traces.get(&(slot, key.clone()))
    }

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

    /// Marks a step as asked for first; false when it already was.
    pub fn mark_preferred(&mut self, slot: Slot, key: &TraceKey, step: usize) -> bool {
        self.preferred.insert((slot, key.clone(), step))
    }

    pub fn fail(&mut self, slot: Slot, key: TraceKey, message: String) {
        self.pending.remove(&(slot, key.clone()));
        self.failed.insert((slot, key), message);
    }

    /// Adds what the worker decoded after the trace (a step's image, the teacher's) to a cached
    /// trace; nothing happens when the trace was forgotten meanwhile (its model changed).
    pub fn update(&mut self, slot: Slot, key: &TraceKey, change: impl FnOnce(&mut TraceData)) {
        if let Some(cached) = self.traces.get_mut(&(slot, key.clone())) {
            // A view holds a clone of the Arc only within a frame, so this rarely copies.
            change(Arc::make_mut(&mut cached.data));
        }
    }

    /// Forgets everything of a slot (its model changed).
    pub fn clear_slot(&mut self, slot: Slot) {
        self.traces.retain(|(s, _), _| *s != slot);
        self.pending.retain(|(s, _), _| *s != slot);
        self.failed.retain(|(s, _), _| *s != slot);
        self.preferred.retain(|(s, _, _)| *s != slot);
    }

    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }
}
