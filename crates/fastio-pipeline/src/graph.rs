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

    // The nodes left are on a cycle or downstream of one. Those on cycles are grouped by
    // mutual reachability: the strongly connected components (Tarjan's algorithm, linear
    // in nodes and edges). Each group is reported once, from its lowest node.
    let mut groups: Vec<BTreeSet<usize>> = strongly_connected(n, &successors)
        .into_iter()
        .filter(|g| g.len() > 1 || g.iter().any(|&v| successors[v].contains(&v)))
        .collect();
    groups.sort_by_key(|g| g.first().copied());
    let cycles = groups
        .iter()
        .map(|group| {
            let start = *group.first().expect("a group is not empty");
            shortest_cycle(start, group, &successors)
        })
        .collect();
    Err(cycles)
}

/// The strongly connected components of the graph, by Tarjan's algorithm without
/// recursion (a long chain of operators must not overflow the stack).
fn strongly_connected(n: usize, successors: &[BTreeSet<usize>]) -> Vec<BTreeSet<usize>> {
    const UNSEEN: usize = usize::MAX;
    let mut index = vec![UNSEEN; n];
    let mut low = vec![0; n];
    let mut on_stack = vec![false; n];
    let mut stack = Vec::new();
    let mut next = 0;
    let mut components = Vec::new();
    let edges: Vec<Vec<usize>> = successors
        .iter()
        .map(|s| s.iter().copied().collect())
        .collect();
    for root in 0..n {
        if index[root] != UNSEEN {
            continue;
        }
        // (node, position of the next edge to follow)
        let mut call: Vec<(usize, usize)> = vec![(root, 0)];
        index[root] = next;
        low[root] = next;
        next += 1;
        stack.push(root);
        on_stack[root] = true;
        while let Some(&mut (node, ref mut edge)) = call.last_mut() {
            if let Some(&to) = edges[node].get(*edge) {
                *edge += 1;
                if index[to] == UNSEEN {
                    index[to] = next;
                    low[to] = next;
                    next += 1;
                    stack.push(to);
                    on_stack[to] = true;
                    call.push((to, 0));
                } else if on_stack[to] {
                    low[node] = low[node].min(index[to]);
                }
                continue;
            }
            call.pop();
            if let Some(&(parent, _)) = call.last() {
                low[parent] = low[parent].min(low[node]);
            }
            if low[node] == index[node] {
                let mut component = BTreeSet::new();
                while let Some(member) = stack.pop() {
                    on_stack[member] = false;
                    component.insert(member);
                    if member == node {
                        break;
                    }
                }
                components.push(component);
            }
        }
    }
    components
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
