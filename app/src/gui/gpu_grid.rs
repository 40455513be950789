//! The proxy-code grid and the confidence heatmap drawn on the GPU: an egui-wgpu paint callback
//! running `shaders/token_grid.wgsl`. The picture is the one [`super::token_grid::paint_grid`]
//! draws with egui's painter; that CPU path stays the fallback (glow renderer, tests).
//!
//! Use: [`install`] once with the creation context's `wgpu_render_state` (creates the pipeline and
//! keeps it in the renderer's `callback_resources`), then [`paint_grid_gpu`] wherever the grid is
//! drawn; it returns `false` when [`install`] was never called, and the caller paints on the CPU.
//!
//! Several grids may be drawn in one frame (the states grid and the heatmap over the image, or two
//! models side by side): each callback takes its own slot (uniform + storage buffer, bind group)
//! from a pool in `prepare`, and the pool is rewound in `finish_prepare`, which egui-wgpu calls
//! after every `prepare` of the frame.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use eframe::egui_wgpu::{self, wgpu};
use egui::Rect;

use super::token_grid::{GridCells, normalised_confidences};
use super::trace_data::CodeState;

/// The WGSL source (validated by `tests/shaders.rs`).
pub const SHADER_SOURCE: &str = include_str!("../../../shaders/token_grid.wgsl");
/// Entry points of [`SHADER_SOURCE`] that the pipeline uses.
pub const VERTEX_ENTRY: &str = "vs_main";
pub const FRAGMENT_ENTRY: &str = "fs_main";
/// Names of the WGSL structs that mirror [`GpuCell`] and [`GpuParams`].
pub const WGSL_CELL_STRUCT: &str = "Cell";
pub const WGSL_PARAMS_STRUCT: &str = "Params";

/// Opacity of the heatmap (as the CPU path's `gamma_multiply(0.6)`).
pub const HEAT_ALPHA: f32 = 0.6;

/// One cell as the shader reads it (`struct Cell` in the WGSL, a storage-buffer array element).
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
pub struct GpuCell {
    /// [`state_code`] of the cell's [`CodeState`].
    pub state: u32,
    /// Normalised confidence, 0..1 ([`normalised_confidences`]).
    pub level: f32,
}

/// The per-draw uniform (`struct Params` in the WGSL).
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
pub struct GpuParams {
    pub size_px: [f32; 2],
    pub grid: u32,
    /// 0 = states, 1 = heatmap.
    pub mode: u32,
    pub pixels_per_point: f32,
    pub heat_alpha: f32,
    /// 1 when the framebuffer is sRGB-encoded (the shader then outputs linear colour).
    pub linear_output: u32,
    pub _pad: u32,
}

pub const CELL_SIZE: usize = std::mem::size_of::<GpuCell>();
pub const PARAMS_SIZE: usize = std::mem::size_of::<GpuParams>();

/// The shader's code for a cell state.
pub fn state_code(state: CodeState) -> u32 {
    match state {
        CodeState::Masked => 0,
        CodeState::RevealedNow => 1,
        CodeState::RevealedBefore => 2,
    }
}

/// The `grid * grid` cells of a step in the shader's format, row-major. Missing states count as
/// masked and missing confidences as 0.
pub fn pack_cells(cells: &GridCells) -> Vec<GpuCell> {
    let n = cells.grid * cells.grid;
    let levels = normalised_confidences(cells.confidences);
    (0..n)
        .map(|i| GpuCell {
            state: cells.states.get(i).map_or(0, |&s| state_code(s)),
            level: levels.get(i).copied().unwrap_or(0.0),
        })
        .collect()
}

/// The bytes of a cell array as the storage buffer holds them (little-endian, as every wgpu
/// backend's hosts are).
pub fn cells_to_bytes(cells: &[GpuCell]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(cells.len() * CELL_SIZE);
    for c in cells {
        bytes.extend_from_slice(&c.state.to_le_bytes());
        bytes.extend_from_slice(&c.level.to_le_bytes());
    }
    bytes
}

impl GpuParams {
    pub fn to_bytes(&self) -> [u8; PARAMS_SIZE] {
        let words = [
            self.size_px[0].to_bits(),
            self.size_px[1].to_bits(),
            self.grid,
            self.mode,
            self.pixels_per_point.to_bits(),
            self.heat_alpha.to_bits(),
            self.linear_output,
            self._pad,
        ];
        let mut bytes = [0u8; PARAMS_SIZE];
        for (chunk, w) in bytes.chunks_exact_mut(4).zip(words) {
            chunk.copy_from_slice(&w.to_le_bytes());
        }
        bytes
    }
}

/// Set by [`install`]: the wgpu renderer has the pipeline.
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// Whether [`install`] has run (so [`paint_grid_gpu`] draws).
pub fn is_installed() -> bool {
    INSTALLED.load(Ordering::Acquire)
}

/// Creates the pipeline for eframe's default wgpu setup (`NativeOptions::multisampling` 0 and
/// `depth_buffer` 0). Call once, with `cc.wgpu_render_state`.
pub fn install(render_state: &egui_wgpu::RenderState) {
    install_with(render_state, 1, None);
}

/// As [`install`], for a render pass with MSAA (`msaa_samples` = `NativeOptions::multisampling`,
/// 0 or 1 for none) or a depth buffer (the format eframe picks from `NativeOptions::depth_buffer`):
/// the pipeline must match egui's render pass.
pub fn install_with(
    render_state: &egui_wgpu::RenderState,
    msaa_samples: u32,
    depth_stencil_format: Option<wgpu::TextureFormat>,
) {
    let device = &render_state.device;
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("sftok_token_grid"),
        source: wgpu::ShaderSource::Wgsl(SHADER_SOURCE.into()),
    });
    let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some("sftok_token_grid"),
        entries: &[
            wgpu::BindGroupLayoutEntry {
                binding: 0,
                visibility: wgpu::ShaderStages::FRAGMENT,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Uniform,
                    has_dynamic_offset: false,
                    min_binding_size: wgpu::BufferSize::new(PARAMS_SIZE as u64),
                },
                count: None,
            },
            wgpu::BindGroupLayoutEntry {
                binding: 1,
                visibility: wgpu::ShaderStages::FRAGMENT,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Storage { read_only: true },
                    has_dynamic_offset: false,
                    min_binding_size: wgpu::BufferSize::new(CELL_SIZE as u64),
                },
                count: None,
            },
        ],
    });
    let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some("sftok_token_grid"),
        bind_group_layouts: &[Some(&layout)],
        immediate_size: 0,
    });
    let pipeline = device.create_render_pipeline(&wgpu::RenderPipelineDescriptor {
        label: Some("sftok_token_grid"),
        layout: Some(&pipeline_layout),
        vertex: wgpu::VertexState {
            module: &module,
            entry_point: Some(VERTEX_ENTRY),
            compilation_options: wgpu::PipelineCompilationOptions::default(),
            buffers: &[],
        },
        primitive: wgpu::PrimitiveState::default(),
        depth_stencil: depth_stencil_format.map(|format| wgpu::DepthStencilState {
            format,
            depth_write_enabled: Some(false),
            depth_compare: Some(wgpu::CompareFunction::Always),
            stencil: wgpu::StencilState::default(),
            bias: wgpu::DepthBiasState::default(),
        }),
        multisample: wgpu::MultisampleState {
            count: msaa_samples.max(1),
            mask: !0,
            alpha_to_coverage_enabled: false,
        },
        fragment: Some(wgpu::FragmentState {
            module: &module,
            entry_point: Some(FRAGMENT_ENTRY),
            compilation_options: wgpu::PipelineCompilationOptions::default(),
            targets: &[Some(wgpu::ColorTargetState {
                format: render_state.target_format,
                // egui's own blending: premultiplied alpha.
                blend: Some(wgpu::BlendState {
                    color: wgpu::BlendComponent {
                        src_factor: wgpu::BlendFactor::One,
                        dst_factor: wgpu::BlendFactor::OneMinusSrcAlpha,
                        operation: wgpu::BlendOperation::Add,
                    },
                    alpha: wgpu::BlendComponent {
                        src_factor: wgpu::BlendFactor::OneMinusDstAlpha,
                        dst_factor: wgpu::BlendFactor::One,
                        operation: wgpu::BlendOperation::Add,
                    },
                }),
                write_mask: wgpu::ColorWrites::ALL,
            })],
        }),
        multiview_mask: None,
        cache: None,
    });
    render_state
        .renderer
        .write()
        .callback_resources
        .insert(GridResources {
            pipeline,
            layout,
            slots: Vec::new(),
            next_slot: 0,
            linear_output: render_state.target_format.is_srgb(),
        });
    INSTALLED.store(true, Ordering::Release);
}

/// Kept in the renderer's `callback_resources`.
struct GridResources {
    pipeline: wgpu::RenderPipeline,
    layout: wgpu::BindGroupLayout,
    slots: Vec<Slot>,
    /// The next free slot of this frame.
    next_slot: usize,
    linear_output: bool,
}

/// The buffers of one draw.
struct Slot {
    params: wgpu::Buffer,
    cells: wgpu::Buffer,
    /// Cells the storage buffer holds.
    capacity: usize,
    bind_group: wgpu::BindGroup,
}

impl GridResources {
    /// A slot whose storage buffer holds `cells` cells (grown, never shrunk).
    fn slot(&mut self, device: &wgpu::Device, index: usize, cells: usize) -> &Slot {
        let cells = cells.max(1);
        let fits = self.slots.get(index).is_some_and(|s| s.capacity >= cells);
        if !fits {
            let capacity = cells.next_power_of_two().max(256);
            let params = match self.slots.get(index) {
                Some(s) => s.params.clone(),
                None => device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("sftok_token_grid_params"),
                    size: PARAMS_SIZE as u64,
                    usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                }),
            };
            let cell_buffer = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("sftok_token_grid_cells"),
                size: (capacity * CELL_SIZE) as u64,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("sftok_token_grid"),
                layout: &self.layout,
                entries: &[
                    wgpu::BindGroupEntry {
                        binding: 0,
                        resource: params.as_entire_binding(),
                    },
                    wgpu::BindGroupEntry {
                        binding: 1,
                        resource: cell_buffer.as_entire_binding(),
                    },
                ],
            });
            let slot = Slot {
                params,
                cells: cell_buffer,
                capacity,
                bind_group,
            };
            if index < self.slots.len() {
                self.slots[index] = slot;
            } else {
                self.slots.push(slot);
            }
        }
        &self.slots[index]
    }
}

/// One grid drawn this frame.
struct GridCallback {
    rect: Rect,
    grid: u32,
    heatmap: bool,
    cells: Vec<GpuCell>,
    /// The slot `prepare` filled (`usize::MAX` before).
    slot: AtomicUsize,
}

impl egui_wgpu::CallbackTrait for GridCallback {
    fn prepare(
        &self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        screen_descriptor: &egui_wgpu::ScreenDescriptor,
        _egui_encoder: &mut wgpu::CommandEncoder,
        callback_resources: &mut egui_wgpu::CallbackResources,
    ) -> Vec<wgpu::CommandBuffer> {
        let Some(resources) = callback_resources.get_mut::<GridResources>() else {
            return Vec::new();
        };
        let index = resources.next_slot;
        resources.next_slot += 1;
        let ppp = screen_descriptor.pixels_per_point;
        let params = GpuParams {
            size_px: [self.rect.width() * ppp, self.rect.height() * ppp],
            grid: self.grid,
            mode: u32::from(self.heatmap),
            pixels_per_point: ppp,
            heat_alpha: HEAT_ALPHA,
            linear_output: u32::from(resources.linear_output),
            _pad: 0,
        };
        let slot = resources.slot(device, index, self.cells.len());
        queue.write_buffer(&slot.params, 0, &params.to_bytes());
        if !self.cells.is_empty() {
            queue.write_buffer(&slot.cells, 0, &cells_to_bytes(&self.cells));
        }
        self.slot.store(index, Ordering::Release);
        Vec::new()
    }

    fn finish_prepare(
        &self,
        _device: &wgpu::Device,
        _queue: &wgpu::Queue,
        _egui_encoder: &mut wgpu::CommandEncoder,
        callback_resources: &mut egui_wgpu::CallbackResources,
    ) -> Vec<wgpu::CommandBuffer> {
        // Every prepare of this frame has run: the next frame starts at slot 0 again.
        if let Some(resources) = callback_resources.get_mut::<GridResources>() {
            resources.next_slot = 0;
        }
        Vec::new()
    }

    fn paint(
        &self,
        _info: egui::PaintCallbackInfo,
        render_pass: &mut wgpu::RenderPass<'static>,
        callback_resources: &egui_wgpu::CallbackResources,
    ) {
        let Some(resources) = callback_resources.get::<GridResources>() else {
            return;
        };
        let Some(slot) = resources.slots.get(self.slot.load(Ordering::Acquire)) else {
            return;
        };
        render_pass.set_pipeline(&resources.pipeline);
        render_pass.set_bind_group(0, &slot.bind_group, &[]);
        render_pass.draw(0..3, 0..1);
    }
}

/// Draws the grid into `rect` on the GPU (as [`super::token_grid::paint_grid`] does on the CPU):
/// the states, or with `heatmap` the semi-transparent confidence heatmap to lay over the image.
/// Returns `false`, drawing nothing, when the GPU path is not installed (glow renderer, tests):
/// then paint with [`super::token_grid::paint_grid`].
pub fn paint_grid_gpu(
    painter: &egui::Painter,
    rect: Rect,
    cells: &GridCells,
    heatmap: bool,
) -> bool {
    if !is_installed() {
        return false;
    }
    if cells.grid == 0 || !rect.is_positive() {
        return true;
    }
    let callback = GridCallback {
        rect,
        grid: cells.grid as u32,
        heatmap,
        cells: pack_cells(cells),
        slot: AtomicUsize::new(usize::MAX),
    };
    painter.add(egui_wgpu::Callback::new_paint_callback(rect, callback));
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_pack_states_and_normalised_confidences_row_major() {
        let states = [
            CodeState::Masked,
            CodeState::RevealedNow,
            CodeState::RevealedBefore,
            CodeState::RevealedNow,
        ];
        let confidences = [1.0, 3.0, f32::INFINITY, 2.0];
        let cells = GridCells {
            grid: 2,
            states: &states,
            confidences: &confidences,
        };
        let packed = pack_cells(&cells);
        assert_eq!(
            packed,
            vec![
                GpuCell {
                    state: 0,
                    level: 0.0
                },
                GpuCell {
                    state: 1,
                    level: 1.0
                },
                GpuCell {
                    state: 2,
                    level: 1.0
                },
                GpuCell {
                    state: 1,
                    level: 0.5
                },
            ]
        );
        let bytes = cells_to_bytes(&packed);
        assert_eq!(bytes.len(), 4 * CELL_SIZE);
        assert_eq!(CELL_SIZE, 8);
        // Cell 3: state 1, level 0.5.
        assert_eq!(&bytes[24..28], &1u32.to_le_bytes());
        assert_eq!(&bytes[28..32], &0.5f32.to_le_bytes());
    }

    #[test]
    fn short_inputs_pad_as_masked_cells() {
        let cells = GridCells {
            grid: 2,
            states: &[CodeState::RevealedBefore],
            confidences: &[],
        };
        let packed = pack_cells(&cells);
        assert_eq!(packed.len(), 4);
        assert_eq!(packed[0].state, 2);
        assert!(packed[1..].iter().all(|c| c.state == 0 && c.level == 0.0));
    }

    #[test]
    fn params_bytes_follow_the_wgsl_field_order() {
        let params = GpuParams {
            size_px: [320.0, 240.0],
            grid: 16,
            mode: 1,
            pixels_per_point: 2.0,
            heat_alpha: HEAT_ALPHA,
            linear_output: 1,
            _pad: 0,
        };
        let bytes = params.to_bytes();
        assert_eq!(PARAMS_SIZE, 32);
        assert_eq!(&bytes[0..4], &320.0f32.to_le_bytes());
        assert_eq!(&bytes[4..8], &240.0f32.to_le_bytes());
        assert_eq!(&bytes[8..12], &16u32.to_le_bytes());
        assert_eq!(&bytes[12..16], &1u32.to_le_bytes());
        assert_eq!(&bytes[16..20], &2.0f32.to_le_bytes());
        assert_eq!(&bytes[20..24], &HEAT_ALPHA.to_le_bytes());
        assert_eq!(&bytes[24..28], &1u32.to_le_bytes());
        assert_eq!(&bytes[28..32], &[0; 4]);
    }

    #[test]
    fn without_install_the_caller_falls_back_to_the_cpu_painter() {
        // Nothing in the unit tests installs the pipeline.
        let ctx = egui::Context::default();
        let painter = egui::Painter::new(
            ctx,
            egui::LayerId::background(),
            Rect::from_min_size(egui::Pos2::ZERO, egui::vec2(100.0, 100.0)),
        );
        let cells = GridCells {
            grid: 1,
            states: &[CodeState::Masked],
            confidences: &[0.0],
        };
        assert!(!paint_grid_gpu(
            &painter,
            Rect::from_min_size(egui::Pos2::ZERO, egui::vec2(10.0, 10.0)),
            &cells,
            false
        ));
    }
}
