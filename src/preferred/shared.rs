//! Placement of devices that share hardware: time-sliced replicas, vGPU slices, and MIG devices
//! (many per GPU). Devices are grouped into units (the hardware they share) and taken from the
//! units by a spread or a packing rule.

use crate::resources::Device;

/// Devices of one piece of hardware (a GPU, or a MIG device for MIG-backed replicas).
struct Unit<'a> {
    gpu: u32,
    /// Must-include devices on this unit (already in the answer).
    must: usize,
    /// Free devices not yet taken, in resource order.
    free: Vec<&'a Device>,
    /// Free devices when the request came in: fewer means more of it is used by other pods.
    initially_free: usize,
}

/// Group `must` and `free` devices by `key`, in order of first appearance (the resource order:
/// GPU index, MIG index, replica / slice number).
fn units<'a>(
    must: &[&'a Device],
    free: &[&'a Device],
    key: impl Fn(&'a Device) -> &'a str,
) -> Vec<Unit<'a>> {
    let mut keys: Vec<&'a str> = Vec::new();
    let mut units: Vec<Unit<'a>> = Vec::new();
    let mut unit_of = |d: &'a Device| {
        let k = key(d);
        match keys.iter().position(|&x| x == k) {
            Some(i) => i,
            None => {
                keys.push(k);
                units.push(Unit {
                    gpu: d.target.gpu_index,
                    must: 0,
                    free: Vec::new(),
                    initially_free: 0,
                });
                units.len() - 1
            }
        }
    };
    let free_at: Vec<usize> = free.iter().map(|&d| unit_of(d)).collect();
    let must_at: Vec<usize> = must.iter().map(|&d| unit_of(d)).collect();
    for (&d, i) in free.iter().zip(free_at) {
        units[i].free.push(d);
        units[i].initially_free += 1;
    }
    for i in must_at {
        units[i].must += 1;
    }
    units
}

/// The unit a device is time-shared on: its MIG device, else its GPU.
pub fn by_device(d: &Device) -> &str {
    d.target.device_uuid()
}

/// The physical GPU a device is on.
pub fn by_gpu(d: &Device) -> &str {
    &d.target.gpu_uuid
}

/// Spread `want` devices over as many units as possible: each pick goes to the unit whose GPU
/// and then itself hold the fewest devices of this answer (must-include ones count), then the
/// least contended unit (most free devices), then the first in resource order.
pub fn spread<'a>(
    must: &[&'a Device],
    free: &[&'a Device],
    key: impl Fn(&'a Device) -> &'a str,
    want: usize,
) -> Vec<&'a Device> {
    let units = units(must, free, key);
    let mut per_gpu: Vec<(u32, usize)> = Vec::new();
    for u in &units {
        match per_gpu.iter_mut().find(|(g, _)| *g == u.gpu) {
            Some((_, n)) => *n += u.must,
            None => per_gpu.push((u.gpu, u.must)),
        }
    }
    let gpu_use = |per_gpu: &[(u32, usize)], gpu: u32| {
        per_gpu
            .iter()
            .find(|(g, _)| *g == gpu)
            .map_or(0, |(_, n)| *n)
    };
    let mut picked = Vec::with_capacity(want);
    // Units hand out free devices from the front; `next[i]` is the next one of unit i.
    let mut next = vec![0usize; units.len()];
    while picked.len() < want {
        let choice = units
            .iter()
            .enumerate()
            .filter(|(i, u)| next[*i] < u.free.len())
            .min_by_key(|(i, u)| {
                (
                    gpu_use(&per_gpu, u.gpu),
                    u.must + next[*i],
                    std::cmp::Reverse(u.initially_free),
                    *i,
                )
            })
            .map(|(i, _)| i);
        let Some(i) = choice else {
            break;
        };
        picked.push(units[i].free[next[i]]);
        next[i] += 1;
        if let Some((_, n)) = per_gpu.iter_mut().find(|(g, _)| *g == units[i].gpu) {
            *n += 1;
        }
    }
    picked
}

/// Pack `want` devices onto as few units as possible: units that hold must-include devices
/// first, then best fit (the unit with the fewest free devices that still holds all the rest,
/// which keeps emptier units whole), else the unit with the most free devices; ties go to a GPU
/// already in the answer, then to resource order.
pub fn packed<'a>(
    must: &[&'a Device],
    free: &[&'a Device],
    key: impl Fn(&'a Device) -> &'a str,
    want: usize,
) -> Vec<&'a Device> {
    let mut units = units(must, free, key);
    let mut picked: Vec<&'a Device> = Vec::with_capacity(want);
    let mut used_gpus: Vec<u32> = must.iter().map(|d| d.target.gpu_index).collect();
    let mut order: Vec<usize> = (0..units.len()).filter(|&i| units[i].must > 0).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(units[i].must), i));
    for i in order {
        take(&mut units[i], want, &mut picked, &mut used_gpus);
    }
    while picked.len() < want {
        let rest = want - picked.len();
        let open = || units.iter().enumerate().filter(|(_, u)| !u.free.is_empty());
        let fresh = |u: &Unit<'_>| !used_gpus.contains(&u.gpu);
        let fit = open()
            .filter(|(_, u)| u.free.len() >= rest)
            .min_by_key(|(i, u)| (u.free.len(), fresh(u), *i))
            .map(|(i, _)| i);
        let choice = fit.or_else(|| {
            open()
                .min_by_key(|(i, u)| (std::cmp::Reverse(u.free.len()), fresh(u), *i))
                .map(|(i, _)| i)
        });
        let Some(i) = choice else {
            break;
        };
        take(&mut units[i], want, &mut picked, &mut used_gpus);
    }
    picked
}

/// Move free devices of `unit` into `picked` until it holds `want`.
fn take<'a>(unit: &mut Unit<'a>, want: usize, picked: &mut Vec<&'a Device>, used: &mut Vec<u32>) {
    let n = want.saturating_sub(picked.len()).min(unit.free.len());
    if n > 0 && !used.contains(&unit.gpu) {
        used.push(unit.gpu);
    }
    picked.extend(unit.free.drain(..n));
}

/// vGPU slices: a container may use slices of one GPU only (Allocate refuses more), so all come
/// from one GPU: the one of the first must-include slice; else, among GPUs with `want` free
/// slices, the least contended (most free) when spreading or the best fit (fewest free) when
/// packing; else the GPU with the most free slices (a short answer: no single GPU can serve
/// the request, and slices from two GPUs would be refused anyway).
pub fn vgpu<'a>(
    must: &[&'a Device],
    free: &[&'a Device],
    want: usize,
    packed: bool,
) -> Vec<&'a Device> {
    let mut units = units(must, free, by_gpu);
    let chosen = match must.first() {
        Some(first) => units.iter().position(|u| u.gpu == first.target.gpu_index),
        None => {
            let open = || units.iter().enumerate().filter(|(_, u)| !u.free.is_empty());
            let fit = if packed {
                open()
                    .filter(|(_, u)| u.free.len() >= want)
                    .min_by_key(|(i, u)| (u.free.len(), *i))
            } else {
                open()
                    .filter(|(_, u)| u.free.len() >= want)
                    .min_by_key(|(i, u)| (std::cmp::Reverse(u.free.len()), *i))
            };
            fit.or_else(|| open().min_by_key(|(i, u)| (std::cmp::Reverse(u.free.len()), *i)))
                .map(|(i, _)| i)
        }
    };
    let mut picked = Vec::with_capacity(want);
    if let Some(i) = chosen {
        let mut used = Vec::new();
        take(&mut units[i], want, &mut picked, &mut used);
    }
    picked
}
