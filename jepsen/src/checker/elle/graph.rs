//! The graph of dependencies between transactions and the search for its
//! cycles: Tarjan's strongly connected components first, then, inside each
//! component, breadth-first searches for the shortest cycle of each kind.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use petgraph::algo::tarjan_scc;
use petgraph::graph::{DiGraph, NodeIndex};

/// Edge kinds, as bits of an edge's mask. A lower bit names an edge first
/// when it has several kinds, so a cycle is named by the weakest relations
/// that make it.
pub(crate) const WW: u8 = 1;
pub(crate) const WR: u8 = 2;
pub(crate) const RW: u8 = 4;
pub(crate) const REALTIME: u8 = 8;
const ALL: u8 = WW | WR | RW | REALTIME;

/// Why a dependency edge exists: the key and values that put it there.
#[derive(Clone, Debug)]
pub(crate) enum Why {
    /// The target wrote `value`, which follows the source's `prior`.
    Ww { key: u64, prior: u64, value: u64 },
    /// The target read the source's write of `value`.
    Wr { key: u64, value: u64 },
    /// The source read the key at `read` (`None`: the initial state) and the
    /// target wrote `value`, which follows it.
    Rw {
        key: u64,
        read: Option<u64>,
        value: u64,
    },
}

impl Why {
    fn kind(&self) -> u8 {
        match self {
            Why::Ww { .. } => WW,
            Why::Wr { .. } => WR,
            Why::Rw { .. } => RW,
        }
    }
}

/// Edges between txns (indexes into the checker's txn list), each with a
/// mask of kinds and the first reason found for each dependency kind.
#[derive(Default)]
pub(crate) struct DepGraph {
    edges: BTreeMap<(usize, usize), u8>,
    whys: HashMap<(usize, usize, u8), Why>,
}

impl DepGraph {
    /// Adds a dependency edge; an edge from a txn to itself says nothing and
    /// is dropped.
    pub fn add(&mut self, from: usize, to: usize, why: Why) {
        if from != to {
            let kind = why.kind();
            *self.edges.entry((from, to)).or_default() |= kind;
            self.whys.entry((from, to, kind)).or_insert(why);
        }
    }

    pub fn add_realtime(&mut self, from: usize, to: usize) {
        *self.edges.entry((from, to)).or_default() |= REALTIME;
    }

    pub fn why(&self, from: usize, to: usize, kind: u8) -> Option<&Why> {
        self.whys.get(&(from, to, kind))
    }

    /// How many edges have this kind.
    pub fn count(&self, kind: u8) -> usize {
        self.edges.values().filter(|m| *m & kind != 0).count()
    }

    fn adjacency(&self, nodes: usize) -> Vec<Vec<(usize, u8)>> {
        let mut adjacency = vec![Vec::new(); nodes];
        for (&(from, to), &kinds) in &self.edges {
            adjacency[from].push((to, kinds));
        }
        adjacency
    }
}

/// A cycle as steps: each txn with the kind of its edge to the next step's
/// txn, the last step's edge leading back to the first.
pub(crate) type Cycle = Vec<(usize, u8)>;

pub(crate) struct CycleSearch {
    /// Each named cycle: at most one per kind per component.
    pub cycles: Vec<(String, Cycle)>,
    /// The sizes of the components with more than one txn.
    pub scc_sizes: Vec<usize>,
    /// Components whose search ran out of time; each still has a cycle.
    pub timeouts: usize,
}

struct TimedOut;

/// Searches each strongly connected component with more than one txn.
/// Every such component holds a cycle, so each yields at least one: if
/// the searches for particular kinds run past `time_limit` (per
/// component), any cycle of the component is named by its edges instead.
pub(crate) fn search_cycles(graph: &DepGraph, nodes: usize, time_limit: Duration) -> CycleSearch {
    let adjacency = graph.adjacency(nodes);
    let all: Vec<usize> = (0..nodes).collect();
    let mut search = CycleSearch {
        cycles: Vec::new(),
        scc_sizes: Vec::new(),
        timeouts: 0,
    };
    for component in components(&adjacency, &all, ALL) {
        search.scc_sizes.push(component.len());
        let deadline = Instant::now() + time_limit;
        let mut found: BTreeMap<String, Cycle> = BTreeMap::new();
        let mut keep = |cycle: Cycle| {
            let kind = name(&cycle);
            if found
                .get(&kind)
                .is_none_or(|known| known.len() > cycle.len())
            {
                found.insert(kind, cycle);
            }
        };
        match search_kinds(&adjacency, &component, deadline, &mut keep) {
            Ok(()) => {}
            Err(TimedOut) => {
                search.timeouts += 1;
                if let Ok(Some(cycle)) = cycle_through(&adjacency, &component, ALL, ALL, None) {
                    keep(cycle);
                }
            }
        }
        search.cycles.extend(found);
    }
    search
}

/// The searches, from the weakest kind of cycle to the strongest. Those
/// that may use rw or realtime edges may also find weaker cycles; each is
/// named by its edges.
fn search_kinds(
    adjacency: &[Vec<(usize, u8)>],
    component: &[usize],
    deadline: Instant,
    keep: &mut impl FnMut(Cycle),
) -> Result<(), TimedOut> {
    let deadline = Some(deadline);
    let searches = [
        (WW, WW),
        (WW | WR, WR),
        (WW | WR, RW),
        (WW | WR | RW, RW),
        (WW | REALTIME, REALTIME),
        (WW | WR | REALTIME, REALTIME),
        (WW | WR | REALTIME, RW),
        (ALL, REALTIME),
    ];
    for (mask, through) in searches {
        let cycle = if through == RW && mask & RW == 0 {
            single_rw_cycle(adjacency, component, mask, deadline)?
        } else {
            cycle_through(adjacency, component, mask, through, deadline)?
        };
        if let Some(cycle) = cycle {
            keep(cycle);
        }
    }
    Ok(())
}

/// A cycle over `mask` edges that takes at least one `through` edge: within
/// a component of the `mask` subgraph, any `through` edge lies on a cycle,
/// which the shortest path back closes.
fn cycle_through(
    adjacency: &[Vec<(usize, u8)>],
    nodes: &[usize],
    mask: u8,
    through: u8,
    deadline: Option<Instant>,
) -> Result<Option<Cycle>, TimedOut> {
    for component in components(adjacency, nodes, mask) {
        let scope: HashSet<usize> = component.iter().copied().collect();
        for &from in &component {
            for &(to, kinds) in &adjacency[from] {
                if kinds & through != 0 && scope.contains(&to) {
                    let path = shortest_path(adjacency, &scope, mask, to, from, deadline)?;
                    if let Some(path) = path {
                        return Ok(Some(close(from, kinds & mask, path)));
                    }
                }
            }
        }
    }
    Ok(None)
}

/// A cycle with exactly one rw edge: for each rw edge, the shortest path
/// back over `mask` edges (which exclude rw).
fn single_rw_cycle(
    adjacency: &[Vec<(usize, u8)>],
    component: &[usize],
    mask: u8,
    deadline: Option<Instant>,
) -> Result<Option<Cycle>, TimedOut> {
    let scope: HashSet<usize> = component.iter().copied().collect();
    for &from in component {
        for &(to, kinds) in &adjacency[from] {
            if kinds & RW != 0
                && scope.contains(&to)
                && let Some(path) = shortest_path(adjacency, &scope, mask, to, from, deadline)?
            {
                return Ok(Some(close(from, kinds & (mask | RW), path)));
            }
        }
    }
    Ok(None)
}

/// The cycle made of the edge `from → path[0]` (with these kinds) and the path.
fn close(from: usize, kinds: u8, path: Cycle) -> Cycle {
    let mut cycle = vec![(from, lowest(kinds))];
    cycle.extend(path);
    cycle
}

fn lowest(kinds: u8) -> u8 {
    kinds & kinds.wrapping_neg()
}

/// The shortest path from `from` to `to` over `mask` edges inside `scope`,
/// as steps from `from` up to the one whose edge reaches `to`.
fn shortest_path(
    adjacency: &[Vec<(usize, u8)>],
    scope: &HashSet<usize>,
    mask: u8,
    from: usize,
    to: usize,
    deadline: Option<Instant>,
) -> Result<Option<Cycle>, TimedOut> {
    let mut reached: HashMap<usize, (usize, u8)> = HashMap::new();
    let mut queue = VecDeque::from([from]);
    while let Some(node) = queue.pop_front() {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(TimedOut);
        }
        for &(next, kinds) in &adjacency[node] {
            if kinds & mask == 0 || next == from || !scope.contains(&next) {
                continue;
            }
            if reached.contains_key(&next) {
                continue;
            }
            reached.insert(next, (node, lowest(kinds & mask)));
            if next == to {
                let mut path = Vec::new();
                let mut at = to;
                while at != from {
                    let (previous, kind) = reached[&at];
                    path.push((previous, kind));
                    at = previous;
                }
                path.reverse();
                return Ok(Some(path));
            }
            queue.push_back(next);
        }
    }
    Ok(None)
}

/// The strongly connected components, with more than one node, of the
/// subgraph of `nodes` and their `mask` edges.
fn components(adjacency: &[Vec<(usize, u8)>], nodes: &[usize], mask: u8) -> Vec<Vec<usize>> {
    let mut graph: DiGraph<usize, ()> = DiGraph::with_capacity(nodes.len(), nodes.len());
    let local: HashMap<usize, NodeIndex> = nodes.iter().map(|&n| (n, graph.add_node(n))).collect();
    for &from in nodes {
        for &(to, kinds) in &adjacency[from] {
            if let Some(&target) = local.get(&to).filter(|_| kinds & mask != 0) {
                graph.add_edge(local[&from], target, ());
            }
        }
    }
    tarjan_scc(&graph)
        .into_iter()
        .filter(|component| component.len() > 1)
        .map(|component| {
            let mut members: Vec<usize> = component.into_iter().map(|i| graph[i]).collect();
            members.sort_unstable();
            members
        })
        .collect()
}

/// Names a cycle by its edges: G0 (ww only), G1c (ww and wr), G-single
/// (one rw), G-nonadjacent (several rw, no two in a row), G2-item (two rw
/// in a row); "-realtime" when it takes a realtime edge.
pub(crate) fn name(cycle: &[(usize, u8)]) -> String {
    let count = |kind| cycle.iter().filter(|step| step.1 == kind).count();
    let adjacent_rw =
        (0..cycle.len()).any(|i| cycle[i].1 == RW && cycle[(i + 1) % cycle.len()].1 == RW);
    let base = match count(RW) {
        0 if count(WR) == 0 => "G0",
        0 => "G1c",
        1 => "G-single",
        _ if !adjacent_rw => "G-nonadjacent",
        _ => "G2-item",
    };
    if count(REALTIME) > 0 {
        format!("{base}-realtime")
    } else {
        base.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(edges: &[(usize, usize, u8)]) -> DepGraph {
        let mut graph = DepGraph::default();
        for &(from, to, kind) in edges {
            let why = match kind {
                WW => Why::Ww {
                    key: 0,
                    prior: 0,
                    value: 0,
                },
                WR => Why::Wr { key: 0, value: 0 },
                RW => Why::Rw {
                    key: 0,
                    read: None,
                    value: 0,
                },
                _ => {
                    graph.add_realtime(from, to);
                    continue;
                }
            };
            graph.add(from, to, why);
        }
        graph
    }

    fn names(search: &CycleSearch) -> Vec<&str> {
        search.cycles.iter().map(|(n, _)| n.as_str()).collect()
    }

    #[test]
    fn cycles_are_named_by_their_edges() {
        assert_eq!(name(&[(0, WW), (1, WW)]), "G0");
        assert_eq!(name(&[(0, WW), (1, WR)]), "G1c");
        assert_eq!(
            name(&[(0, RW), (1, WR), (2, REALTIME)]),
            "G-single-realtime"
        );
        assert_eq!(name(&[(0, RW), (1, WR), (2, RW), (3, WW)]), "G-nonadjacent");
        assert_eq!(name(&[(0, RW), (1, RW)]), "G2-item");
    }

    #[test]
    fn acyclic_graphs_have_no_components_to_search() {
        let search = search_cycles(
            &graph(&[(0, 1, WW), (1, 2, RW), (0, 2, REALTIME)]),
            3,
            Duration::from_secs(1),
        );
        assert!(search.cycles.is_empty());
        assert!(search.scc_sizes.is_empty());
    }

    #[test]
    fn the_shortest_cycle_of_each_kind_is_found() {
        // A long ww cycle 0→1→2→3→0 with a shortcut wr edge 2→0, and an rw
        // edge 3→1 that closes a G-single through 1→2→3.
        let search = search_cycles(
            &graph(&[
                (0, 1, WW),
                (1, 2, WW),
                (2, 3, WW),
                (3, 0, WW),
                (2, 0, WR),
                (3, 1, RW),
            ]),
            4,
            Duration::from_secs(1),
        );
        assert_eq!(search.scc_sizes, vec![4]);
        assert_eq!(names(&search), vec!["G-single", "G0", "G1c"]);
        let cycles: BTreeMap<&str, &Cycle> =
            search.cycles.iter().map(|(n, c)| (n.as_str(), c)).collect();
        assert_eq!(cycles["G1c"], &vec![(2, WR), (0, WW), (1, WW)]);
        assert_eq!(cycles["G-single"], &vec![(3, RW), (1, WW), (2, WW)]);
    }

    #[test]
    fn a_search_out_of_time_still_reports_a_cycle() {
        let search = search_cycles(&graph(&[(0, 1, RW), (1, 0, REALTIME)]), 2, Duration::ZERO);
        assert_eq!(search.timeouts, 1);
        assert_eq!(names(&search), vec!["G-single-realtime"]);
    }
}
