//! The WGSL in `shaders/`: every file parses and validates with naga 30 (the naga wgpu 30 uses),
//! and `token_grid.wgsl` agrees with the Rust side of `app/src/gui/gpu_grid.rs` (entry points,
//! bindings, struct layouts). Needs no GPU.

use std::mem::offset_of;
use std::path::{Path, PathBuf};

use naga::valid::{Capabilities, ValidationFlags, Validator};
use sftok_app::gui::gpu_grid::{
    CELL_SIZE, FRAGMENT_ENTRY, GpuCell, GpuParams, PARAMS_SIZE, SHADER_SOURCE, VERTEX_ENTRY,
    WGSL_CELL_STRUCT, WGSL_PARAMS_STRUCT,
};

fn shaders_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shaders")
}

fn parse_and_validate(name: &str, source: &str) -> (naga::Module, naga::valid::ModuleInfo) {
    let module = naga::front::wgsl::parse_str(source)
        .unwrap_or_else(|e| panic!("{name} does not parse:\n{}", e.emit_to_string(source)));
    let info = Validator::new(ValidationFlags::all(), Capabilities::default())
        .validate(&module)
        .unwrap_or_else(|e| panic!("{name} does not validate:\n{}", e.emit_to_string(source)));
    (module, info)
}

fn token_grid() -> naga::Module {
    parse_and_validate("token_grid.wgsl", SHADER_SOURCE).0
}

/// Offsets by member name and the size of the WGSL struct `name`.
fn wgsl_struct(module: &naga::Module, name: &str) -> (Vec<(String, u32)>, u32) {
    let mut layouter = naga::proc::Layouter::default();
    layouter.update(module.to_ctx()).expect("layout");
    let (handle, ty) = module
        .types
        .iter()
        .find(|(_, ty)| ty.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no struct {name} in token_grid.wgsl"));
    let naga::TypeInner::Struct { members, span } = &ty.inner else {
        panic!("{name} is not a struct");
    };
    assert_eq!(layouter[handle].size, *span);
    let offsets = members
        .iter()
        .map(|m| (m.name.clone().unwrap_or_default(), m.offset))
        .collect();
    (offsets, *span)
}

#[test]
fn every_wgsl_file_parses_and_validates() {
    let mut checked = Vec::new();
    for entry in std::fs::read_dir(shaders_dir()).expect("shaders/") {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "wgsl") {
            let source = std::fs::read_to_string(&path).unwrap();
            parse_and_validate(&path.display().to_string(), &source);
            checked.push(path);
        }
    }
    assert!(
        checked.iter().any(|p| p.ends_with("token_grid.wgsl")),
        "shaders/token_grid.wgsl is missing: {checked:?}"
    );
}

#[test]
fn the_app_embeds_the_shader_file() {
    let on_disk = std::fs::read_to_string(shaders_dir().join("token_grid.wgsl")).unwrap();
    // (Not assert_eq: the failure message would be two copies of the shader.)
    assert!(
        SHADER_SOURCE == on_disk,
        "gpu_grid::SHADER_SOURCE is not shaders/token_grid.wgsl: rebuild the app"
    );
}

#[test]
fn token_grid_has_the_entry_points_the_pipeline_uses() {
    let module = token_grid();
    let stage_of = |name: &str| {
        module
            .entry_points
            .iter()
            .find(|e| e.name == name)
            .map(|e| e.stage)
    };
    assert_eq!(stage_of(VERTEX_ENTRY), Some(naga::ShaderStage::Vertex));
    assert_eq!(stage_of(FRAGMENT_ENTRY), Some(naga::ShaderStage::Fragment));
}

#[test]
fn token_grid_bindings_match_the_bind_group_layout() {
    // gpu_grid.rs: group 0, binding 0 = uniform Params, binding 1 = read-only storage array<Cell>.
    let module = token_grid();
    let binding = |b: u32| {
        module
            .global_variables
            .iter()
            .map(|(_, g)| g)
            .find(|g| {
                g.binding
                    == Some(naga::ResourceBinding {
                        group: 0,
                        binding: b,
                    })
            })
            .unwrap_or_else(|| panic!("nothing bound at group 0, binding {b}"))
    };
    let params = binding(0);
    assert_eq!(params.space, naga::AddressSpace::Uniform);
    assert_eq!(
        module.types[params.ty].name.as_deref(),
        Some(WGSL_PARAMS_STRUCT)
    );
    let cells = binding(1);
    assert_eq!(
        cells.space,
        naga::AddressSpace::Storage {
            access: naga::StorageAccess::LOAD
        }
    );
    let naga::TypeInner::Array { base, stride, .. } = module.types[cells.ty].inner else {
        panic!("binding 1 is not an array");
    };
    assert_eq!(module.types[base].name.as_deref(), Some(WGSL_CELL_STRUCT));
    assert_eq!(stride as usize, CELL_SIZE, "array<Cell> stride");
    // No other resources (the layout has exactly two entries).
    let bound = module
        .global_variables
        .iter()
        .filter(|(_, g)| g.binding.is_some())
        .count();
    assert_eq!(bound, 2);
}

#[test]
fn token_grid_structs_match_the_rust_layout() {
    let module = token_grid();

    let (cell, cell_size) = wgsl_struct(&module, WGSL_CELL_STRUCT);
    assert_eq!(cell_size as usize, CELL_SIZE);
    assert_eq!(CELL_SIZE, std::mem::size_of::<GpuCell>());
    let rust_cell = [
        ("state", offset_of!(GpuCell, state)),
        ("level", offset_of!(GpuCell, level)),
    ];
    assert_eq!(cell.len(), rust_cell.len());
    for ((wgsl_name, wgsl_offset), (rust_name, rust_offset)) in cell.iter().zip(rust_cell) {
        assert_eq!(
            (wgsl_name.as_str(), *wgsl_offset as usize),
            (rust_name, rust_offset)
        );
    }

    let (params, params_size) = wgsl_struct(&module, WGSL_PARAMS_STRUCT);
    assert_eq!(params_size as usize, PARAMS_SIZE);
    assert_eq!(PARAMS_SIZE, std::mem::size_of::<GpuParams>());
    let rust_params = [
        ("size_px", offset_of!(GpuParams, size_px)),
        ("grid", offset_of!(GpuParams, grid)),
        ("mode", offset_of!(GpuParams, mode)),
        ("pixels_per_point", offset_of!(GpuParams, pixels_per_point)),
        ("heat_alpha", offset_of!(GpuParams, heat_alpha)),
        ("linear_output", offset_of!(GpuParams, linear_output)),
        ("_pad", offset_of!(GpuParams, _pad)),
    ];
    assert_eq!(params.len(), rust_params.len());
    for ((wgsl_name, wgsl_offset), (rust_name, rust_offset)) in params.iter().zip(rust_params) {
        assert_eq!(
            (wgsl_name.as_str(), *wgsl_offset as usize),
            (rust_name, rust_offset)
        );
    }
    // A uniform buffer binding must be a multiple of 16 bytes on some backends.
    assert_eq!(PARAMS_SIZE % 16, 0);
}
