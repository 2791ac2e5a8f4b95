//! Prints the adapter wgnn picks: name, backend, driver, the features wgnn uses, and key limits.
//!
//! Run: `cargo run --example device_info` (narrow the choice with WGNN_ADAPTER / WGNN_BACKEND).

mod common;

use anyhow::Result;
use wgnn::{Gpu, WANTED_FEATURES};

fn main() -> Result<()> {
    common::quiet_vulkan_layers();
    let gpu = Gpu::new()?;
    let info = gpu.adapter_info();
    println!("adapter:  {}", info.name);
    println!("type:     {:?}", info.device_type);
    println!("backend:  {:?}", info.backend);
    println!("driver:   {} {}", info.driver, info.driver_info);
    println!(
        "vendor:   {:#06x}  device: {:#06x}",
        info.vendor, info.device
    );
    println!("features wgnn uses when present:");
    for (name, feature) in WANTED_FEATURES.iter_names() {
        let state = if gpu.features().contains(feature) {
            "yes"
        } else {
            "no"
        };
        println!("  {name:<28} {state}");
    }
    let l = gpu.limits();
    println!("limits:");
    println!(
        "  max_buffer_size                      {}",
        l.max_buffer_size
    );
    println!(
        "  max_storage_buffer_binding_size      {}",
        l.max_storage_buffer_binding_size
    );
    println!(
        "  max_compute_workgroup_storage_size   {}",
        l.max_compute_workgroup_storage_size
    );
    println!(
        "  max_compute_invocations_per_workgroup {}",
        l.max_compute_invocations_per_workgroup
    );
    println!(
        "  max_compute_workgroups_per_dimension {}",
        l.max_compute_workgroups_per_dimension
    );
    println!(
        "  max_storage_buffers_per_shader_stage {}",
        l.max_storage_buffers_per_shader_stage
    );
    println!(
        "subgroup size: {}..{}",
        info.subgroup_min_size, info.subgroup_max_size
    );
    Ok(())
}
