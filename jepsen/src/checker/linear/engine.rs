//! The search: Wing and Gong's algorithm with Lowe's memoisation, as
//! Porcupine runs it, over any [`Model`].
//!
//! A partition's calls and returns are sorted by time into a doubly linked
//! list (a call before a return at equal times, so intervals are closed).
//! The candidates for the next place in the linearization are the
//! operations whose calls come before the first return still in the list.
//! The search places the first candidate the model accepts (taking it out
//! of the list with its return) and starts over; when no candidate fits,
//! the last placed operation is put back and the next candidate after it is
//! tried. A (linearized set, state) pair already explored is never explored
//! twice.
//!
//! Indeterminate operations (which may have happened or not) are where
//! searches explode, so three rules keep them in check, each keeping a
//! linearization if one exists: they are tried after the operations that
//! must be placed; one that would change nothing is never placed; and
//! interchangeable ones (same input, same unknown output) are placed only
//! in call order.

use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// A sequential specification of the object under test.
pub trait Model: Sync {
    type State: Clone + Eq + Hash + Send;
    type Input: Sync + PartialEq;
    type Output: Sync + PartialEq;

    fn init(&self) -> Self::State;

    /// The state after `input` took effect and was answered with `output`,
    /// or `None` if the object in `state` could not have answered that.
    fn step(
        &self,
        state: &Self::State,
        input: &Self::Input,
        output: &Self::Output,
    ) -> Option<Self::State>;

    fn describe_state(&self, state: &Self::State) -> String;

    fn describe_op(&self, input: &Self::Input, output: &Self::Output) -> String;
}

/// One operation of a partition.
#[derive(Clone, Debug)]
pub struct Operation<I, O> {
    pub input: I,
    pub output: O,
    /// When it was invoked.
    pub call: u64,
    /// When it completed; `None` for an indeterminate operation, which may
    /// take effect at any time after its call, or never.
    pub ret: Option<u64>,
    /// The history index of its completion, for reports.
    pub index: u64,
}

/// Why a partition has no linearization: the longest prefix the search
/// built, and the operations that might come next, none of which the model
/// accepts after that prefix.
#[derive(Clone, Debug)]
pub struct Counterexample<S> {
    /// Positions in the partition, in order, with the state after each.
    pub linearized: Vec<(usize, S)>,
    /// The state after the prefix.
    pub state: S,
    /// Positions of the operations that could have been placed next.
    pub stuck: Vec<usize>,
}

#[derive(Clone, Debug)]
pub enum Outcome<S> {
    Linearizable,
    NotLinearizable(Counterexample<S>),
    TimedOut,
}

#[derive(Clone, Debug)]
pub struct PartitionReport<S> {
    pub outcome: Outcome<S>,
    /// Distinct (linearized set, state) pairs explored.
    pub states: usize,
}

/// How many loop iterations pass between two looks at the clock.
const CLOCK_EVERY: u64 = 256;
const HEAD: usize = 0;
const END: usize = usize::MAX;

/// Checks every partition, on at most two threads (the machine this runs on
/// has two cores), largest partitions first. Past `deadline` every search
/// still running stops with [`Outcome::TimedOut`].
pub fn check_partitions<M: Model>(
    model: &M,
    partitions: &[Vec<Operation<M::Input, M::Output>>],
    deadline: Option<Instant>,
) -> Vec<PartitionReport<M::State>> {
    let mut order: Vec<usize> = (0..partitions.len()).collect();
    order.sort_by_key(|&p| std::cmp::Reverse(partitions[p].len()));
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(2)
        .min(partitions.len());
    let next = AtomicUsize::new(0);
    let results = Mutex::new(Vec::with_capacity(partitions.len()));
    let work = || {
        while let Some(&partition) = order.get(next.fetch_add(1, Ordering::Relaxed)) {
            let report = check_partition(model, &partitions[partition], deadline);
            results
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .push((partition, report));
        }
    };
    if threads > 1 {
        std::thread::scope(|scope| {
            for _ in 0..threads {
                scope.spawn(work);
            }
        });
    } else {
        work();
    }
    let mut results = results
        .into_inner()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    results.sort_by_key(|(partition, _)| *partition);
    results.into_iter().map(|(_, report)| report).collect()
}

/// Decides one partition.
pub fn check_partition<M: Model>(
    model: &M,
    ops: &[Operation<M::Input, M::Output>],
    deadline: Option<Instant>,
) -> PartitionReport<M::State> {
    let mut list = EntryList::new(ops);
    let twins = earlier_twins(ops);
    let mut required = ops.iter().filter(|op| op.ret.is_some()).count();
    let mut linearized = Bitset::new(ops.len());
    let mut explored: HashSet<(Bitset, M::State)> = HashSet::new();
    // Each choice made: the operation, the state before it, and where in
    // the candidates the search goes on if the choice fails.
    let mut stack: Vec<(usize, M::State, usize)> = Vec::new();
    let mut longest: Vec<usize> = Vec::new();
    let mut state = model.init();
    let mut candidates = list.candidates(ops);
    let mut next = 0;
    let mut iterations = 0u64;
    let report = |outcome, explored: &HashSet<_>| PartitionReport {
        outcome,
        states: explored.len(),
    };
    loop {
        if required == 0 {
            return report(Outcome::Linearizable, &explored);
        }
        if iterations.is_multiple_of(CLOCK_EVERY) && deadline.is_some_and(|d| Instant::now() >= d) {
            return report(Outcome::TimedOut, &explored);
        }
        iterations += 1;
        if let Some(&op) = candidates.get(next) {
            next += 1;
            if twins[op].is_some_and(|twin| !linearized.get(twin)) {
                continue;
            }
            let stepped = model.step(&state, &ops[op].input, &ops[op].output);
            // An indeterminate operation that changes nothing (a compare
            // that does not hold) need never be placed: leaving it out of a
            // linearization leaves a linearization.
            let pointless = ops[op].ret.is_none() && stepped.as_ref() == Some(&state);
            let Some(after) = stepped.filter(|_| !pointless) else {
                continue;
            };
            linearized.set(op);
            if !explored.insert((linearized.clone(), after.clone())) {
                linearized.clear(op);
                continue;
            }
            stack.push((op, std::mem::replace(&mut state, after), next));
            list.lift(op);
            if ops[op].ret.is_some() {
                required -= 1;
            }
            if stack.len() > longest.len() {
                longest = stack.iter().map(|(op, _, _)| *op).collect();
            }
            candidates = list.candidates(ops);
            next = 0;
        } else {
            // Every candidate failed: undo the last choice and try the next.
            let Some((op, before, resume)) = stack.pop() else {
                let counterexample = counterexample(model, ops, &longest);
                return report(Outcome::NotLinearizable(counterexample), &explored);
            };
            linearized.clear(op);
            list.unlift(op);
            if ops[op].ret.is_some() {
                required += 1;
            }
            state = before;
            candidates = list.candidates(ops);
            next = resume;
        }
    }
}

/// For each indeterminate operation, the indeterminate operation with the
/// same input and output invoked just before it, if any. Such twins are
/// interchangeable: both may take effect any time after their calls, or
/// never, with the same effect. So a linearization that places a later twin
/// first, or without the earlier, becomes one that places the earlier
/// first by swapping them, and the search only tries twins in call order.
/// Without this, n indeterminate writes of a handful of values make up to
/// 2^n linearized sets that differ only in which twin was chosen.
fn earlier_twins<I: PartialEq, O: PartialEq>(ops: &[Operation<I, O>]) -> Vec<Option<usize>> {
    let mut indeterminate: Vec<usize> = (0..ops.len()).filter(|&i| ops[i].ret.is_none()).collect();
    indeterminate.sort_by_key(|&i| (ops[i].call, i));
    let mut twins = vec![None; ops.len()];
    for (position, &op) in indeterminate.iter().enumerate() {
        twins[op] = indeterminate[..position]
            .iter()
            .rev()
            .find(|&&earlier| {
                ops[earlier].input == ops[op].input && ops[earlier].output == ops[op].output
            })
            .copied();
    }
    twins
}

/// Replays the longest prefix and lists the operations that could follow
/// it: those invoked no later than the earliest return among the rest. The
/// search tried each of them after this prefix, and the model refused all,
/// or it would have found a longer prefix.
fn counterexample<M: Model>(
    model: &M,
    ops: &[Operation<M::Input, M::Output>],
    longest: &[usize],
) -> Counterexample<M::State> {
    let mut state = model.init();
    let mut linearized = Vec::with_capacity(longest.len());
    let mut placed = vec![false; ops.len()];
    for &op in longest {
        if let Some(after) = model.step(&state, &ops[op].input, &ops[op].output) {
            state = after;
        }
        placed[op] = true;
        linearized.push((op, state.clone()));
    }
    let pending = || (0..ops.len()).filter(|&op| !placed[op]);
    let first_return = pending().filter_map(|op| ops[op].ret).min();
    let stuck = pending()
        .filter(|&op| first_return.is_none_or(|r| ops[op].call <= r))
        .collect();
    Counterexample {
        linearized,
        state,
        stuck,
    }
}

/// How many operations of a long prefix an explanation lists (the last ones).
const PREFIX_SHOWN: usize = 50;

/// The counterexample in sentences: the prefix with the state after each
/// operation, then each operation that could not come next, observed output
/// against the state it met. Operations are named by history index.
pub fn explain<M: Model>(
    model: &M,
    ops: &[Operation<M::Input, M::Output>],
    counterexample: &Counterexample<M::State>,
) -> String {
    let linearized = &counterexample.linearized;
    let mut text = format!(
        "The longest partial linearization found places {} of {} operations",
        linearized.len(),
        ops.len()
    );
    let hidden = linearized.len().saturating_sub(PREFIX_SHOWN);
    if hidden > 0 {
        text += &format!(" (the first {hidden} are not listed)");
    }
    text += if linearized.is_empty() { ".\n" } else { ":\n" };
    for (op, after) in &linearized[hidden..] {
        let operation = &ops[*op];
        text += &format!(
            "  op {}: {}; then {}\n",
            operation.index,
            model.describe_op(&operation.input, &operation.output),
            model.describe_state(after)
        );
    }
    let state = model.describe_state(&counterexample.state);
    text += &format!("None of the operations that could come next fits the state {state}:\n");
    for op in &counterexample.stuck {
        let operation = &ops[*op];
        text += &format!(
            "  op {}: {} cannot follow {state}\n",
            operation.index,
            model.describe_op(&operation.input, &operation.output)
        );
    }
    text
}

/// Calls and returns sorted by time, as a doubly linked list behind a head
/// sentinel, from which an operation's pair of entries can be taken out and
/// put back in last-out-first-in order.
struct EntryList {
    next: Vec<usize>,
    prev: Vec<usize>,
    is_call: Vec<bool>,
    op_of: Vec<usize>,
    call_node: Vec<usize>,
    return_node: Vec<Option<usize>>,
}

impl EntryList {
    fn new<I, O>(ops: &[Operation<I, O>]) -> EntryList {
        // (time, is a return, op): calls sort before returns at equal times.
        let mut entries: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * ops.len());
        for (op, operation) in ops.iter().enumerate() {
            entries.push((operation.call, false, op));
            if let Some(ret) = operation.ret {
                entries.push((ret, true, op));
            }
        }
        entries.sort_unstable();
        let nodes = entries.len() + 1;
        let mut list = EntryList {
            next: (1..=nodes)
                .map(|n| if n == nodes { END } else { n })
                .collect(),
            prev: (0..nodes).map(|n| n.wrapping_sub(1)).collect(),
            is_call: vec![false; nodes],
            op_of: vec![0; nodes],
            call_node: vec![0; ops.len()],
            return_node: vec![None; ops.len()],
        };
        for (position, &(_, is_return, op)) in entries.iter().enumerate() {
            let node = position + 1;
            list.is_call[node] = !is_return;
            list.op_of[node] = op;
            if is_return {
                list.return_node[op] = Some(node);
            } else {
                list.call_node[op] = node;
            }
        }
        list
    }

    fn unlink(&mut self, node: usize) {
        let (before, after) = (self.prev[node], self.next[node]);
        self.next[before] = after;
        if after != END {
            self.prev[after] = before;
        }
    }

    fn relink(&mut self, node: usize) {
        let (before, after) = (self.prev[node], self.next[node]);
        self.next[before] = node;
        if after != END {
            self.prev[after] = node;
        }
    }

    /// The operations that may be linearized next: those whose calls come
    /// before the first return still in the list. Operations that must be
    /// placed come first and indeterminate ones after, so the search tries
    /// leaving indeterminate operations out before it tries putting them in.
    fn candidates<I, O>(&self, ops: &[Operation<I, O>]) -> Vec<usize> {
        let mut required = Vec::new();
        let mut optional = Vec::new();
        let mut node = self.next[HEAD];
        while node != END && self.is_call[node] {
            let op = self.op_of[node];
            if ops[op].ret.is_some() {
                required.push(op);
            } else {
                optional.push(op);
            }
            node = self.next[node];
        }
        required.extend(optional);
        required
    }

    fn lift(&mut self, op: usize) {
        self.unlink(self.call_node[op]);
        if let Some(ret) = self.return_node[op] {
            self.unlink(ret);
        }
    }

    fn unlift(&mut self, op: usize) {
        if let Some(ret) = self.return_node[op] {
            self.relink(ret);
        }
        self.relink(self.call_node[op]);
    }
}

/// The set of linearized operations.
#[derive(Clone, PartialEq, Eq)]
struct Bitset(Vec<u64>);

impl Bitset {
    fn new(bits: usize) -> Bitset {
        Bitset(vec![0; bits.div_ceil(64)])
    }

    fn set(&mut self, bit: usize) {
        self.0[bit / 64] |= 1 << (bit % 64);
    }

    fn clear(&mut self, bit: usize) {
        self.0[bit / 64] &= !(1 << (bit % 64));
    }

    fn get(&self, bit: usize) -> bool {
        self.0[bit / 64] & (1 << (bit % 64)) != 0
    }
}

impl Hash for Bitset {
    /// Folds the words into one (xor, then multiply by an odd constant), so
    /// hashing a set costs one hasher write whatever its size.
    fn hash<H: Hasher>(&self, hasher: &mut H) {
        let folded = self.0.iter().fold(0u64, |h, &word| {
            (h ^ word).wrapping_mul(0xff51_afd7_ed55_8ccd)
        });
        hasher.write_u64(folded);
    }
}
