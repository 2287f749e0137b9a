//! The operator graph: dependency order, cycles, and Graphviz output.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;

use crate::error::Direction;
use crate::model::Pipeline;

/// Orders `n` nodes so that every edge `(from, to)` has `from` first. Among nodes that are
/// ready together, the lowest index comes first, so the order is the definition order as far as
/// the edges allow. When the edges form cycles, returns one cycle per group of mutually
/// dependent nodes instead: the nodes in edge order, the first repeated at the end.
pub(crate) fn topological_order(
    n: usize,
    edges: &[(usize, usize)],
) -> Result<Vec<usize>, Vec<Vec<usize>>> {
    let mut successors: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); n];
    for &(from, to) in edges {
        successors[from].insert(to);
    }
    let mut in_degree = vec![0usize; n];
    for targets in &successors {
        for &to in targets {
            in_degree[to] += 1;
        }
    }
    let mut ready: BTreeSet<usize> = (0..n).filter(|&i| in_degree[i] == 0).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(node) = ready.pop_first() {
        order.push(node);
        for &to in &successors[node] {
            in_degree[to] -= 1;
            if in_degree[to] == 0 {
                ready.insert(to);
            }
        }
    }
    if order.len() == n {
        return Ok(order);
    }

    // The nodes left are on a cycle or downstream of one. Group those on cycles by mutual
    // reachability (definitions are small, so the quadratic walk is fine).
    let left: Vec<usize> = (0..n).filter(|&i| in_degree[i] > 0).collect();
    let reach = |start: usize| -> BTreeSet<usize> {
        let mut seen = BTreeSet::new();
        let mut queue = VecDeque::from([start]);
        while let Some(node) = queue.pop_front() {
            for &to in &successors[node] {
                if seen.insert(to) {
                    queue.push_back(to);
                }
            }
        }
        seen
    };
    let reachable: BTreeMap<usize, BTreeSet<usize>> = left.iter().map(|&i| (i, reach(i))).collect();
    let mut done = BTreeSet::new();
    let mut cycles = Vec::new();
    for &start in &left {
        if done.contains(&start) || !reachable[&start].contains(&start) {
            continue;
        }
        let group: BTreeSet<usize> = left
            .iter()
            .copied()
            .filter(|&o| reachable[&start].contains(&o) && reachable[&o].contains(&start))
            .collect();
        done.extend(group.iter().copied());
        cycles.push(shortest_cycle(start, &group, &successors));
    }
    Err(cycles)
}

/// The shortest path from `start` back to itself through `group`, by breadth-first search:
/// `start`, the nodes in edge order, then `start` again.
fn shortest_cycle(
    start: usize,
    group: &BTreeSet<usize>,
    successors: &[BTreeSet<usize>],
) -> Vec<usize> {
    let mut parent = BTreeMap::new();
    let mut queue = VecDeque::from([start]);
    while let Some(node) = queue.pop_front() {
        for &to in &successors[node] {
            if to == start {
                // Walk back from `node` to `start`, then turn the walk around.
                let mut path = vec![start];
                let mut at = node;
                while at != start {
                    path.push(at);
                    at = parent[&at];
                }
                path.push(start);
                path.reverse();
                return path;
            }
            if group.contains(&to) && !parent.contains_key(&to) {
                parent.insert(to, node);
                queue.push_back(to);
            }
        }
    }
    unreachable!("start is on a cycle within its group")
}

impl Pipeline {
    /// The operator graph in Graphviz dot: one node per operator, in dependency order, and one
    /// edge per input that reads an upstream output, labelled with the entry's name and
    /// declaration (`volume: int16[256,512,512]`, `uid: string`, `count: u64`,
    /// `results: stream(dicom)`; an unnamed stream by its declaration alone). The output is the same for the same definition.
    pub fn to_dot(&self) -> String {
        let mut dot = String::new();
        let _ = writeln!(dot, "digraph {} {{", quote(self.name()));
        dot.push_str("    rankdir=LR;\n    node [shape=box];\n");
        for op in self.operators() {
            let _ = writeln!(dot, "    {};", quote(op.name()));
        }
        for link in self.links() {
            let (producer, _) = self.resolve(link.output, Direction::Output);
            let (consumer, input) = self.resolve(link.input, Direction::Input);
            // An unnamed entry (Clara allows one per list) is labelled by its kind alone.
            let label = match input.name() {
                "" => input.kind().to_string(),
                name => format!("{name}: {}", input.kind()),
            };
            let _ = writeln!(
                dot,
                "    {} -> {} [label={}];",
                quote(producer.name()),
                quote(consumer.name()),
                quote(&label)
            );
        }
        dot.push_str("}\n");
        dot
    }
}

/// A dot string literal.
fn quote(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len() + 2);
    quoted.push('"');
    for c in text.chars() {
        match c {
            '"' | '\\' => {
                quoted.push('\\');
                quoted.push(c);
            }
            '\n' => quoted.push_str("\\n"),
            _ => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}
