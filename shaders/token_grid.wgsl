// The proxy-code grid of one decoding step, drawn into an egui paint-callback rect
// (app/src/gui/gpu_grid.rs). egui-wgpu sets the viewport to the callback's rect, so one
// full-viewport triangle covers it; the fragment shader finds the cell under each pixel.
//
// Two modes (Params.mode):
//   0 "states":  masked dark grey, revealed-now amber, revealed-before teal; 1-point gaps
//                between the cells (transparent, the thin cell borders) and a 1-point grey outline, as the CPU path
//                (app/src/gui/token_grid.rs: paint_grid) draws it.
//   1 "heatmap": each cell in the inferno-like colour map of its normalised confidence,
//                semi-transparent (Params.heat_alpha) so the image below shows through.
//
// Output is premultiplied alpha in gamma (sRGB-encoded) space, as egui blends it; with a linear
// (sRGB-format) framebuffer (Params.linear_output = 1) the colour is converted as egui's own
// shader does.

// One cell: keep in step with `GpuCell` in gpu_grid.rs (8 bytes; tests/shaders.rs checks it).
struct Cell {
    // 0 = masked, 1 = revealed at this step, 2 = revealed at an earlier step.
    state: u32,
    // Normalised confidence, 0..1 (1 for ids known before the step).
    level: f32,
}

// Keep in step with `GpuParams` in gpu_grid.rs (32 bytes).
struct Params {
    // Size of the callback rect in physical pixels.
    size_px: vec2<f32>,
    // Side of the grid (cells = grid * grid, row-major, row 0 at the top).
    grid: u32,
    // 0 = states, 1 = heatmap.
    mode: u32,
    pixels_per_point: f32,
    heat_alpha: f32,
    // 1 when the target format is sRGB (the GPU encodes): output linear colour.
    linear_output: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> cells: array<Cell>;

struct VertexOut {
    @builtin(position) position: vec4<f32>,
    // 0..1 across the rect, y down.
    @location(0) uv: vec2<f32>,
}

@vertex
fn vs_main(@builtin(vertex_index) index: u32) -> VertexOut {
    // A triangle covering the viewport: (-1,-1), (3,-1), (-1,3).
    let x = f32(i32(index & 1u) * 4 - 1);
    let y = f32(i32(index >> 1u) * 4 - 1);
    var out: VertexOut;
    out.position = vec4<f32>(x, y, 0.0, 1.0);
    out.uv = vec2<f32>((x + 1.0) * 0.5, (1.0 - y) * 0.5);
    return out;
}

// The colours of token_grid.rs (sRGB bytes / 255).
const MASKED: vec3<f32> = vec3<f32>(58.0, 58.0, 64.0) / 255.0;
const REVEALED_NOW: vec3<f32> = vec3<f32>(255.0, 196.0, 0.0) / 255.0;
const REVEALED_BEFORE: vec3<f32> = vec3<f32>(38.0, 166.0, 154.0) / 255.0;
const OUTLINE: vec3<f32> = vec3<f32>(90.0, 90.0, 90.0) / 255.0;

// Inferno-like colour map: the control points of token_grid.rs `heat_colour`, linearly
// interpolated (sRGB values).
fn heat_colour(t_in: f32) -> vec3<f32> {
    var stops = array<vec3<f32>, 5>(
        vec3<f32>(0.001, 0.000, 0.014),
        vec3<f32>(0.258, 0.039, 0.406),
        vec3<f32>(0.578, 0.148, 0.404),
        vec3<f32>(0.865, 0.317, 0.226),
        vec3<f32>(0.988, 0.998, 0.645),
    );
    let t = clamp(t_in, 0.0, 1.0) * 4.0;
    let i = min(u32(floor(t)), 3u);
    let f = t - f32(i);
    return mix(stops[i], stops[i + 1u], f);
}

fn state_colour(state: u32) -> vec3<f32> {
    switch state {
        case 1u: {
            return REVEALED_NOW;
        }
        case 2u: {
            return REVEALED_BEFORE;
        }
        default: {
            return MASKED;
        }
    }
}

fn linear_from_gamma(srgb: vec3<f32>) -> vec3<f32> {
    let cutoff = srgb < vec3<f32>(0.04045);
    let lower = srgb / vec3<f32>(12.92);
    let higher = pow((srgb + vec3<f32>(0.055)) / vec3<f32>(1.055), vec3<f32>(2.4));
    return select(higher, lower, cutoff);
}

@fragment
fn fs_main(in: VertexOut) -> @location(0) vec4<f32> {
    let grid = max(params.grid, 1u);
    let ppp = max(params.pixels_per_point, 0.01);
    let size = max(params.size_px, vec2<f32>(1.0));
    let p = in.uv * size;
    let cell_px = size / f32(grid);
    let cell = min(vec2<u32>(max(floor(p / cell_px), vec2<f32>(0.0))), vec2<u32>(grid - 1u));
    let index = cell.y * grid + cell.x;

    var state = 0u;
    var level = 0.0;
    if index < arrayLength(&cells) {
        state = cells[index].state;
        level = cells[index].level;
    }

    // Premultiplied colour in gamma space.
    var colour = vec4<f32>(0.0);
    if params.mode == 1u {
        colour = vec4<f32>(heat_colour(level), 1.0) * params.heat_alpha;
    } else {
        // The cell shrunk by half a point on each side, its edges snapped to whole pixels
        // (as egui rounds rects to pixels), so the gaps between cells stay crisp.
        let start = vec2<f32>(cell) * cell_px;
        let lo = floor(start + vec2<f32>(0.5 * ppp) + 0.5);
        let hi = floor(start + cell_px - vec2<f32>(0.5 * ppp) + 0.5);
        if all(p >= lo) && all(p < hi) {
            colour = vec4<f32>(state_colour(state), 1.0);
        }
        // The outline: one point wide, inside the rect, over the cells.
        let edge = min(min(p.x, p.y), min(size.x - p.x, size.y - p.y));
        if edge < ppp {
            colour = vec4<f32>(OUTLINE, 1.0);
        }
    }

    if params.linear_output == 1u {
        return vec4<f32>(linear_from_gamma(colour.rgb), colour.a);
    }
    return colour;
}
