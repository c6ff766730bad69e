//! The best GPU set among a request's candidates: exhaustive while the combinations are few,
//! greedy + swap local search above that. Pure and allocation-light; sets are `u64` bitmasks
//! over candidate positions, which are in GPU-index order so that "lowest GPU indices" is "the
//! set holding the lowest bit where two sets differ".

use super::topology::{Score, Topology};

/// At most this many candidate GPUs take part in a search (a set is a `u64` bitmask). Nodes
/// have 16 GPUs or fewer; above this the caller falls back to GPU-index order.
pub const MAX_CANDIDATES: usize = 64;

/// The exhaustive search runs when the free combinations number at most this. Every request
/// with 8 candidates or fewer qualifies (at most C(8,4) = 70), so those always get the optimum;
/// larger ones do too while the enumeration stays in the tens of microseconds.
pub const EXHAUSTIVE_MAX_COMBINATIONS: u64 = 4096;

/// The candidates of one request as a dense graph: pairwise tables, NUMA node bits, and the
/// positions that must be in the answer.
#[derive(Debug, Clone)]
pub struct Problem {
    n: usize,
    links: Vec<u32>,
    pcie: Vec<u32>,
    /// Dense NUMA node number (0..64) of each candidate, `None` without affinity.
    numa: Vec<Option<u8>>,
    must: u64,
}

impl Problem {
    /// The sub-problem over `gpus` (indices into `topology`, in ascending order; at most
    /// [`MAX_CANDIDATES`], more are ignored); `must[i]` marks `gpus[i]` as must-include.
    pub fn new(topology: &Topology, gpus: &[u32], must: &[bool]) -> Self {
        let gpus = &gpus[..gpus.len().min(MAX_CANDIDATES)];
        let n = gpus.len();
        let mut links = vec![0; n * n];
        let mut pcie = vec![0; n * n];
        for (a, &ga) in gpus.iter().enumerate() {
            for (b, &gb) in gpus.iter().enumerate() {
                if a != b {
                    links[a * n + b] = topology.links(ga, gb);
                    pcie[a * n + b] = topology.pcie_distance(ga, gb);
                }
            }
        }
        let mut nodes: Vec<u32> = Vec::new();
        let numa = gpus
            .iter()
            .map(|&g| {
                let node = topology.numa_node(g)?;
                let dense = nodes.iter().position(|&x| x == node).unwrap_or_else(|| {
                    nodes.push(node);
                    nodes.len() - 1
                });
                // At most 64 candidates, so at most 64 distinct nodes.
                u8::try_from(dense).ok()
            })
            .collect();
        let must = must
            .iter()
            .take(n)
            .enumerate()
            .filter(|(_, &m)| m)
            .fold(0u64, |set, (i, _)| set | 1 << i);
        Self {
            n,
            links,
            pcie,
            numa,
            must,
        }
    }

    /// Number of candidates.
    pub fn len(&self) -> usize {
        self.n
    }

    /// True without candidates.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// The must-include positions.
    pub fn must(&self) -> u64 {
        self.must
    }

    /// Score of the set `set` (a bitmask of positions).
    pub fn score(&self, set: u64) -> Score {
        let mut state = State::new(self);
        for i in bits(set & self.all()) {
            state.add(i);
        }
        state.score()
    }

    fn all(&self) -> u64 {
        if self.n >= 64 {
            u64::MAX
        } else {
            (1u64 << self.n) - 1
        }
    }

    fn free(&self) -> Vec<usize> {
        bits(self.all() & !self.must).collect()
    }
}

/// The best set of `size` positions (fewer when there are fewer candidates), must-include
/// ones always in: exhaustive when that is cheap (see [`EXHAUSTIVE_MAX_COMBINATIONS`]), else
/// [`local_search`].
pub fn best(problem: &Problem, size: usize) -> u64 {
    let free = problem.free().len();
    let want = size
        .saturating_sub(problem.must.count_ones() as usize)
        .min(free);
    if combinations(free, want) <= EXHAUSTIVE_MAX_COMBINATIONS {
        exhaustive(problem, size)
    } else {
        local_search(problem, size)
    }
}

/// The optimum by enumerating every combination of free candidates in lexicographic order; on
/// equal scores the first (lowest GPU indices) wins.
pub fn exhaustive(problem: &Problem, size: usize) -> u64 {
    let mut state = State::new(problem);
    for i in bits(problem.must) {
        state.add(i);
    }
    let free = problem.free();
    let want = size.saturating_sub(state.count).min(free.len());
    if want == 0 {
        return state.set;
    }
    let mut best = None;
    enumerate(&mut state, &free, 0, want, &mut best);
    best.map_or(state.set, |(_, set)| set)
}

fn enumerate(
    state: &mut State<'_>,
    free: &[usize],
    start: usize,
    want: usize,
    best: &mut Option<(Score, u64)>,
) {
    if want == 1 {
        for &v in &free[start..] {
            let candidate = (state.score_with(v), state.set | 1 << v);
            if best.is_none_or(|b| better(candidate, b)) {
                *best = Some(candidate);
            }
        }
        return;
    }
    for i in start..=free.len() - want {
        let rest = &free[i + 1..];
        state.add_in(free[i], rest.iter().copied());
        enumerate(state, free, i + 1, want - 1, best);
        state.remove_in(free[i], rest.iter().copied());
    }
}

/// Near-optimal search for large candidate sets: from every free candidate as a seed, grow the
/// set greedily (the candidate that scores best when added), then apply the best improving
/// single swap until none improves; keep the best result over all seeds. Deterministic.
pub fn local_search(problem: &Problem, size: usize) -> u64 {
    let mut base = State::new(problem);
    for i in bits(problem.must) {
        base.add(i);
    }
    let free = problem.free();
    let target = base.count + size.saturating_sub(base.count).min(free.len());
    if target == base.count {
        return base.set;
    }
    let mut best: Option<(Score, u64)> = None;
    for &seed in &free {
        let mut state = base.clone();
        state.add(seed);
        while state.count < target {
            let mut pick: Option<(Score, usize)> = None;
            for &v in &free {
                if state.set & 1 << v == 0 {
                    let s = state.score_with(v);
                    if pick.is_none_or(|(p, _)| s > p) {
                        pick = Some((s, v));
                    }
                }
            }
            match pick {
                Some((_, v)) => state.add(v),
                None => break,
            }
        }
        improve(&mut state, &free);
        let candidate = (state.score(), state.set);
        if best.is_none_or(|b| better(candidate, b)) {
            best = Some(candidate);
        }
    }
    best.map_or(base.set, |(_, set)| set)
}

/// Best-improvement swap descent: swap one free member out and one non-member in while that
/// makes the set strictly better (score, then lower GPU indices).
fn improve(state: &mut State<'_>, free: &[usize]) {
    loop {
        let current = (state.score(), state.set);
        let mut pick: Option<((Score, u64), usize, usize)> = None;
        for &u in free {
            if state.set & 1 << u == 0 {
                continue;
            }
            for &v in free {
                if state.set & 1 << v != 0 {
                    continue;
                }
                let candidate = (state.score_swap(u, v), (state.set & !(1 << u)) | 1 << v);
                let bar = pick.map_or(current, |(c, _, _)| c);
                if better(candidate, bar) {
                    pick = Some((candidate, u, v));
                }
            }
        }
        let Some((_, u, v)) = pick else {
            return;
        };
        state.remove(u);
        state.add(v);
    }
}

/// `a` beats `b`: a better score, or an equal one with lower GPU indices.
fn better(a: (Score, u64), b: (Score, u64)) -> bool {
    match a.0.cmp(&b.0) {
        std::cmp::Ordering::Greater => true,
        std::cmp::Ordering::Less => false,
        std::cmp::Ordering::Equal => {
            let diff = a.1 ^ b.1;
            diff != 0 && a.1 & (diff & diff.wrapping_neg()) != 0
        }
    }
}

/// C(n, k), saturating at `u64::MAX`.
pub fn combinations(n: usize, k: usize) -> u64 {
    if k > n {
        return 0;
    }
    let k = k.min(n - k) as u128;
    let mut c: u128 = 1;
    for i in 0..k {
        c = c * (n as u128 - i) / (i + 1);
        if c > u128::from(u64::MAX) {
            return u64::MAX;
        }
    }
    c as u64
}

/// Positions of the set bits, ascending.
pub fn bits(set: u64) -> impl Iterator<Item = usize> {
    let mut rest = set;
    std::iter::from_fn(move || {
        if rest == 0 {
            return None;
        }
        let i = rest.trailing_zeros() as usize;
        rest &= rest - 1;
        Some(i)
    })
}

/// A set with running totals so that adding, removing and trying a swap are cheap.
#[derive(Clone)]
struct State<'p> {
    p: &'p Problem,
    set: u64,
    count: usize,
    links: u64,
    pcie: u64,
    /// Per candidate: NVLinks / PCIe distance to the members of the set.
    links_to: Vec<u64>,
    pcie_to: Vec<u64>,
    /// Members per dense NUMA node.
    per_node: [u16; 64],
    nodes: u32,
}

impl<'p> State<'p> {
    fn new(p: &'p Problem) -> Self {
        Self {
            p,
            set: 0,
            count: 0,
            links: 0,
            pcie: 0,
            links_to: vec![0; p.n],
            pcie_to: vec![0; p.n],
            per_node: [0; 64],
            nodes: 0,
        }
    }

    fn score(&self) -> Score {
        Score {
            links: self.links,
            numa_nodes: self.nodes,
            pcie_distance: self.pcie,
        }
    }

    fn add(&mut self, v: usize) {
        self.add_in(v, 0..self.p.n);
    }

    fn remove(&mut self, u: usize) {
        self.remove_in(u, 0..self.p.n);
    }

    /// Add `v`, keeping the per-candidate totals right only for the candidates in `scope`
    /// (the enumeration only looks at the ones after `v`).
    fn add_in(&mut self, v: usize, scope: impl IntoIterator<Item = usize>) {
        if self.set & 1 << v != 0 {
            return;
        }
        self.set |= 1 << v;
        self.count += 1;
        self.links += self.links_to[v];
        self.pcie += self.pcie_to[v];
        let n = self.p.n;
        for w in scope {
            self.links_to[w] += u64::from(self.p.links[v * n + w]);
            self.pcie_to[w] += u64::from(self.p.pcie[v * n + w]);
        }
        if let Some(node) = self.p.numa[v] {
            let c = &mut self.per_node[usize::from(node)];
            if *c == 0 {
                self.nodes += 1;
            }
            *c += 1;
        }
    }

    /// Undo [`State::add_in`] with the same scope. `u`'s own totals must be right, which they
    /// are when `u` was in the scope of every add since it joined.
    fn remove_in(&mut self, u: usize, scope: impl IntoIterator<Item = usize>) {
        if self.set & 1 << u == 0 {
            return;
        }
        self.set &= !(1 << u);
        self.count -= 1;
        let n = self.p.n;
        for w in scope {
            self.links_to[w] -= u64::from(self.p.links[u * n + w]);
            self.pcie_to[w] -= u64::from(self.p.pcie[u * n + w]);
        }
        self.links -= self.links_to[u];
        self.pcie -= self.pcie_to[u];
        if let Some(node) = self.p.numa[u] {
            let c = &mut self.per_node[usize::from(node)];
            *c -= 1;
            if *c == 0 {
                self.nodes -= 1;
            }
        }
    }

    /// Score of the set plus `v` (not a member).
    fn score_with(&self, v: usize) -> Score {
        let new_node = self.p.numa[v].is_some_and(|n| self.per_node[usize::from(n)] == 0);
        Score {
            links: self.links + self.links_to[v],
            numa_nodes: self.nodes + u32::from(new_node),
            pcie_distance: self.pcie + self.pcie_to[v],
        }
    }

    /// Score of the set with member `u` replaced by non-member `v`.
    fn score_swap(&self, u: usize, v: usize) -> Score {
        let n = self.p.n;
        let (nu, nv) = (self.p.numa[u], self.p.numa[v]);
        let mut nodes = self.nodes;
        if nu != nv {
            if nu.is_some_and(|x| self.per_node[usize::from(x)] == 1) {
                nodes -= 1;
            }
            if nv.is_some_and(|x| self.per_node[usize::from(x)] == 0) {
                nodes += 1;
            }
        }
        Score {
            links: self.links - self.links_to[u] + self.links_to[v]
                - u64::from(self.p.links[u * n + v]),
            numa_nodes: nodes,
            pcie_distance: self.pcie - self.pcie_to[u] + self.pcie_to[v]
                - u64::from(self.p.pcie[u * n + v]),
        }
    }
}
