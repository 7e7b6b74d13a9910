//! Gradient-boosted tree models beside the rules: a LightGBM text model
//! (`model.save_model()` / `model.txt`), checked against the feature
//! catalogue and compiled to flat arrays, scored after the features and
//! before the rules, which read it as the feature `model.score` (0..1).
//!
//! Compiled form: every tree's internal nodes in one array (feature index,
//! threshold, both children and the missing-value rule packed together),
//! leaves in another, one root per tree. Scoring walks each tree from its
//! root with no allocation and no lookup by name.
//!
//! What is refused (typed errors naming the file and the problem): anything
//! but a single-output binary (`objective=binary`) or regression model, a
//! feature name the catalogue does not have (or `model.score` itself),
//! categorical splits, linear trees, and arrays that do not agree.

use std::collections::HashMap;

use super::features::catalogue::{CATALOGUE, F};
use super::features::FeatureVector;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ModelError {
    #[error("{file}: not a LightGBM text model: {message}")]
    Format { file: String, message: String },
    #[error("{file}: feature {name:?} is not in fraudline's feature catalogue (docs/FEATURES.md)")]
    UnknownFeature { file: String, name: String },
    #[error("{file}: unsupported model: {message}")]
    Unsupported { file: String, message: String },
    #[error("{file}: tree {tree}: {message}")]
    Tree {
        file: String,
        tree: usize,
        message: String,
    },
}

/// How a node treats a missing value (LightGBM's `decision_type` bits).
const DEFAULT_LEFT: u8 = 1;
const MISSING_ZERO: u8 = 2;
const MISSING_NAN: u8 = 4;

#[derive(Debug, Clone, Copy, PartialEq)]
struct Node {
    threshold: f64,
    /// Child links: >= 0 an internal node (global index), < 0 a leaf
    /// (`!leaf`, global index into `leaves`).
    left: i32,
    right: i32,
    /// Index into the feature vector.
    feature: u16,
    flags: u8,
}

/// How the summed leaf values become the score.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Output {
    /// `1 / (1 + exp(-k * raw))`.
    Sigmoid(f64),
    Raw,
}

/// Every tree padded to a complete binary tree of `depth` levels (a leaf
/// above the last level becomes splits that lead to it either way), so a
/// walk is `depth` branch-free steps: `i = 2i + 1 + right`. Built when the
/// deepest tree is at most [`MAX_COMPLETE_DEPTH`] levels.
///
/// Thresholds are binned: per feature the model reads (a "slot"), its
/// distinct thresholds sorted; a split keeps the index `k` of its
/// threshold, and a row is turned once into, per slot, `b` = how many of
/// them lie below the value. Then `v > T[k]` exactly when `b > k`: the same
/// answer as comparing the f64s, from a 4-byte split (a 300-tree model
/// fits in 75 KB instead of 300) and an integer compare.
#[derive(Debug, Clone, PartialEq)]
struct Complete {
    depth: u32,
    /// Per tree, `2^depth - 1` packed splits in heap order: bits 0..16 the
    /// threshold's index (`u16::MAX`: never right), 16..24 the slot, bit
    /// 24 "zero is missing", bit 25 the side a missing value takes.
    splits: Vec<u32>,
    /// Per tree, `2^depth` leaf values.
    leaves: Vec<f64>,
    /// Per slot: the catalogue index it reads.
    slots: Vec<u16>,
    /// Per slot: its distinct thresholds, ascending (`bounds[s]..bounds[s+1]`).
    thresholds: Vec<f64>,
    bounds: Vec<u32>,
}

const ZERO_IS_MISSING: u32 = 1 << 24;
const SPECIAL_RIGHT: u32 = 1 << 25;
/// A row's slot state: below this, the bin; these two mark a missing value
/// (always the split's missing side) and an exact zero (the missing side
/// only where zero is missing; otherwise compared as a value, by its bin).
const SLOT_NAN: u32 = 1 << 17;
const SLOT_ZERO: u32 = 1 << 16;
/// Slots a binned model may have (the catalogue is smaller).
const MAX_SLOTS: usize = 256;

/// Deepest trees laid out complete (2^10 leaves a tree at most).
const MAX_COMPLETE_DEPTH: u32 = 10;

/// A compiled model.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    nodes: Vec<Node>,
    leaves: Vec<f64>,
    /// Per tree, its root link (as a child link).
    roots: Vec<i32>,
    /// The branch-free layout, when the trees are shallow enough.
    complete: Option<Complete>,
    output: Output,
    /// Per internal node (same index as `nodes`), LightGBM's
    /// `internal_value`: the value the tree predicts at that node. Only the
    /// explain reads it (per-split contributions); empty when the file has
    /// none.
    node_values: Vec<f64>,
    /// The catalogue features the model reads, for `rules check`-like
    /// reports.
    pub features: Vec<&'static str>,
    /// Where it came from.
    pub source: String,
    /// `sha256:<hex>` of the file.
    pub sha256: String,
    /// The model's version in verdicts: `sha256:` and the first 12 hex
    /// digits of the file's sha256 (shared, so a verdict never allocates
    /// for it).
    pub version: std::sync::Arc<str>,
}

/// One feature's share of a model's raw score for one payment (see
/// [`Model::contributions`]).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Contribution {
    pub feature: &'static str,
    /// In the model's raw units (log-odds for a binary model): positive
    /// pushes towards fraud.
    pub value: f64,
}

/// `sha256:` and 12 hex digits of a `sha256:<hex>` (or bare hex) digest.
fn short_version(sha256: &str) -> String {
    let hex = sha256.strip_prefix("sha256:").unwrap_or(sha256);
    format!("sha256:{}", &hex[..hex.len().min(12)])
}

fn feature_index(name: &str) -> Option<u16> {
    CATALOGUE
        .iter()
        .position(|f| f.name == name || f.name.replace('.', "_") == name)
        .map(|i| i as u16)
}

impl Model {
    /// Parses and checks a LightGBM text model; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<Model, ModelError> {
        let fmt = |message: String| ModelError::Format {
            file: file.to_string(),
            message,
        };
        let unsupported = |message: String| ModelError::Unsupported {
            file: file.to_string(),
            message,
        };
        let mut lines = text.lines().map(str::trim);
        if lines.next() != Some("tree") {
            return Err(fmt("the first line is not \"tree\"".into()));
        }
        // Header, then blocks starting "Tree=N", until "end of trees".
        let mut header: HashMap<&str, &str> = HashMap::new();
        let mut trees: Vec<HashMap<&str, &str>> = Vec::new();
        let mut ended = false;
        for line in lines {
            if line == "end of trees" {
                ended = true;
                break;
            }
            if line.is_empty() {
                continue;
            }
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            if k == "Tree" {
                trees.push(HashMap::new());
            } else if let Some(t) = trees.last_mut() {
                t.insert(k, v);
            } else {
                header.insert(k, v);
            }
        }
        if !ended {
            return Err(fmt("no \"end of trees\" line: the file is cut short".into()));
        }
        if header.get("num_class").copied().unwrap_or("1") != "1"
            || header.get("num_tree_per_iteration").copied().unwrap_or("1") != "1"
        {
            return Err(unsupported("more than one output (multiclass)".into()));
        }
        let objective = header.get("objective").copied().unwrap_or("");
        let output = match objective.split_whitespace().next() {
            Some("binary") => {
                let k = objective
                    .split_whitespace()
                    .find_map(|p| p.strip_prefix("sigmoid:"))
                    .map_or(Ok(1.0), |v| {
                        v.parse::<f64>()
                            .map_err(|e| fmt(format!("objective sigmoid {v:?}: {e}")))
                    })?;
                Output::Sigmoid(k)
            }
            Some("regression") | Some("regression_l2") | Some("regression_l1") | Some("huber") => {
                Output::Raw
            }
            other => {
                return Err(unsupported(format!(
                    "objective {:?} (binary or regression only)",
                    other.unwrap_or("")
                )))
            }
        };
        let names: Vec<&str> = header
            .get("feature_names")
            .ok_or_else(|| fmt("no feature_names line".into()))?
            .split_whitespace()
            .collect();
        let mut columns = Vec::with_capacity(names.len());
        let mut features = Vec::new();
        for n in &names {
            let i = feature_index(n)
                .filter(|i| *i != F::ModelScore as u16)
                .ok_or_else(|| ModelError::UnknownFeature {
                    file: file.to_string(),
                    name: n.to_string(),
                })?;
            columns.push(i);
            features.push(CATALOGUE[i as usize].name);
        }
        if trees.is_empty() {
            return Err(fmt("no trees".into()));
        }
        let sha256 = super::rules::file::sha256_hex(text.as_bytes());
        let mut m = Model {
            nodes: Vec::new(),
            leaves: Vec::new(),
            roots: Vec::with_capacity(trees.len()),
            complete: None,
            output,
            node_values: Vec::new(),
            features,
            source: file.to_string(),
            sha256: sha256.clone(),
            version: std::sync::Arc::from(short_version(&sha256)),
        };
        for (t, tree) in trees.iter().enumerate() {
            m.add_tree(file, t, tree, &columns)?;
        }
        if m.node_values.len() != m.nodes.len() {
            // Some tree had no internal values: no contributions for any.
            m.node_values.clear();
        }
        m.complete = m.lay_out_complete();
        Ok(m)
    }

    /// The depth of the subtree at `link` (a leaf: 0).
    fn depth(&self, link: i32) -> u32 {
        if link < 0 {
            return 0;
        }
        let n = &self.nodes[link as usize];
        1 + self.depth(n.left).max(self.depth(n.right))
    }

    fn lay_out_complete(&self) -> Option<Complete> {
        let depth = self.roots.iter().map(|r| self.depth(*r)).max()?;
        if depth > MAX_COMPLETE_DEPTH {
            return None;
        }
        // Slots and their sorted distinct thresholds.
        let mut by_feature: std::collections::BTreeMap<u16, Vec<f64>> = Default::default();
        for n in &self.nodes {
            by_feature.entry(n.feature).or_default().push(n.threshold);
        }
        if by_feature.len() > MAX_SLOTS {
            return None;
        }
        let mut c = Complete {
            depth,
            splits: Vec::new(),
            leaves: Vec::new(),
            slots: Vec::new(),
            thresholds: Vec::new(),
            bounds: vec![0],
        };
        for (f, mut t) in by_feature {
            t.sort_by(f64::total_cmp);
            t.dedup();
            if t.len() >= usize::from(u16::MAX) || t.iter().any(|x| x.is_nan()) {
                return None;
            }
            c.slots.push(f);
            c.thresholds.extend(t);
            c.bounds.push(c.thresholds.len() as u32);
        }
        let inner = (1usize << depth) - 1;
        c.splits.reserve(inner * self.roots.len());
        c.leaves.reserve((inner + 1) * self.roots.len());
        for &root in &self.roots {
            let base_s = c.splits.len();
            let base_l = c.leaves.len();
            // Padding: never right, missing values left too.
            c.splits.resize(base_s + inner, u32::from(u16::MAX));
            c.leaves.resize(base_l + inner + 1, 0.0);
            self.place(&mut c, root, 0, 0, base_s, base_l, inner);
        }
        Some(c)
    }

    /// Writes the subtree at `link` into heap position `pos` (at `level`).
    #[allow(clippy::too_many_arguments)]
    fn place(
        &self,
        c: &mut Complete,
        link: i32,
        pos: usize,
        level: u32,
        base_s: usize,
        base_l: usize,
        inner: usize,
    ) {
        if level == c.depth {
            // A leaf position: `link` is a leaf here.
            c.leaves[base_l + pos - inner] = self.leaves[!link as usize];
            return;
        }
        if link < 0 {
            // A leaf above the last level: a split that always goes left,
            // and the same leaf on both sides.
            self.place(c, link, 2 * pos + 1, level + 1, base_s, base_l, inner);
            self.place(c, link, 2 * pos + 2, level + 1, base_s, base_l, inner);
            return;
        }
        let n = self.nodes[link as usize];
        let missing_nan = n.flags & MISSING_NAN != 0;
        let to_default_right = n.flags & DEFAULT_LEFT == 0;
        // A NaN under "missing type none" is read as 0; under NaN or zero
        // missing types it takes the default side (for zero: 0 is missing).
        let nan_right = if missing_nan || n.flags & MISSING_ZERO != 0 {
            to_default_right
        } else {
            // 0.0 compared with the threshold.
            0.0 > n.threshold
        };
        let slot = c
            .slots
            .iter()
            .position(|f| *f == n.feature)
            .unwrap_or_default();
        let (lo, hi) = (c.bounds[slot] as usize, c.bounds[slot + 1] as usize);
        let k = c.thresholds[lo..hi]
            .binary_search_by(|t| t.total_cmp(&n.threshold))
            .unwrap_or_default();
        let mut packed = k as u32 | (slot as u32) << 16;
        if n.flags & MISSING_ZERO != 0 {
            packed |= ZERO_IS_MISSING;
        }
        if nan_right {
            packed |= SPECIAL_RIGHT;
        }
        c.splits[base_s + pos] = packed;
        self.place(c, n.left, 2 * pos + 1, level + 1, base_s, base_l, inner);
        self.place(c, n.right, 2 * pos + 2, level + 1, base_s, base_l, inner);
    }

    fn add_tree(
        &mut self,
        file: &str,
        t: usize,
        tree: &HashMap<&str, &str>,
        columns: &[u16],
    ) -> Result<(), ModelError> {
        let bad = |message: String| ModelError::Tree {
            file: file.to_string(),
            tree: t,
            message,
        };
        fn list<T: std::str::FromStr>(
            tree: &HashMap<&str, &str>,
            key: &str,
            bad: &dyn Fn(String) -> ModelError,
        ) -> Result<Vec<T>, ModelError> {
            tree.get(key)
                .ok_or_else(|| bad(format!("no {key}")))?
                .split_whitespace()
                .map(|v| {
                    v.parse::<T>()
                        .map_err(|_| bad(format!("{key}: {v:?} is not a number")))
                })
                .collect()
        }
        let leaves: usize = tree
            .get("num_leaves")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| bad("no num_leaves".into()))?;
        if tree.get("num_cat").copied().unwrap_or("0") != "0" {
            return Err(ModelError::Unsupported {
                file: file.to_string(),
                message: format!("tree {t} has categorical splits"),
            });
        }
        if tree.get("is_linear").copied().unwrap_or("0") != "0" {
            return Err(ModelError::Unsupported {
                file: file.to_string(),
                message: format!("tree {t} is a linear tree"),
            });
        }
        let leaf_value: Vec<f64> = list(tree, "leaf_value", &bad)?;
        if leaf_value.len() != leaves || leaves == 0 {
            return Err(bad(format!(
                "{} leaf values for {leaves} leaves",
                leaf_value.len()
            )));
        }
        let leaf_base = self.leaves.len() as i32;
        self.leaves.extend(leaf_value);
        if leaves == 1 {
            self.roots.push(!leaf_base);
            return Ok(());
        }
        let inner = leaves - 1;
        let feature: Vec<usize> = list(tree, "split_feature", &bad)?;
        let threshold: Vec<f64> = list(tree, "threshold", &bad)?;
        let decision: Vec<u8> = list(tree, "decision_type", &bad)?;
        let left: Vec<i32> = list(tree, "left_child", &bad)?;
        let right: Vec<i32> = list(tree, "right_child", &bad)?;
        for (key, n) in [
            ("split_feature", feature.len()),
            ("threshold", threshold.len()),
            ("decision_type", decision.len()),
            ("left_child", left.len()),
            ("right_child", right.len()),
        ] {
            if n != inner {
                return Err(bad(format!("{key} has {n} entries for {inner} splits")));
            }
        }
        let node_base = self.nodes.len() as i32;
        let link = |c: i32| -> Result<i32, ModelError> {
            if c >= 0 {
                if c as usize >= inner {
                    return Err(bad(format!("child {c} past the {inner} splits")));
                }
                Ok(node_base + c)
            } else {
                let leaf = !c;
                if leaf as usize >= leaves {
                    return Err(bad(format!("leaf {leaf} past the {leaves} leaves")));
                }
                Ok(!(leaf_base + leaf))
            }
        };
        // Optional (only the explain needs it): LightGBM always writes it.
        if let Ok(values) = list::<f64>(tree, "internal_value", &bad) {
            if values.len() == inner && self.node_values.len() == self.nodes.len() {
                self.node_values.extend(values);
            }
        }
        for i in 0..inner {
            let d = decision[i];
            if d & 1 != 0 {
                return Err(ModelError::Unsupported {
                    file: file.to_string(),
                    message: format!("tree {t} has a categorical split"),
                });
            }
            let column = *columns
                .get(feature[i])
                .ok_or_else(|| bad(format!("split feature {} past feature_names", feature[i])))?;
            let mut flags = 0;
            if d & 2 != 0 {
                flags |= DEFAULT_LEFT;
            }
            match (d >> 2) & 3 {
                1 => flags |= MISSING_ZERO,
                2 => flags |= MISSING_NAN,
                _ => {}
            }
            self.nodes.push(Node {
                threshold: threshold[i],
                left: link(left[i])?,
                right: link(right[i])?,
                feature: column,
                flags,
            });
        }
        self.roots.push(node_base);
        Ok(())
    }

    /// Trees in the model.
    pub fn trees(&self) -> usize {
        self.roots.len()
    }

    /// The summed leaf values (LightGBM's raw score).
    pub fn raw(&self, fv: &FeatureVector) -> f64 {
        match &self.complete {
            Some(c) => Self::raw_complete(c, fv),
            None => self.raw_walk(fv),
        }
    }

    /// Branch-free walk of the complete layout, eight trees at a time:
    /// the eight walks are independent chains of loads and compares, so
    /// the CPU overlaps them (one walk alone waits on each load in turn).
    /// The row is binned first (see [`Complete`]), on the stack.
    #[inline]
    fn raw_complete(c: &Complete, fv: &FeatureVector) -> f64 {
        if c.depth == 0 {
            return c.leaves.iter().sum();
        }
        let mut row = [0u32; MAX_SLOTS];
        for (s, &f) in c.slots.iter().enumerate() {
            let v = fv.0[f as usize];
            row[s] = if v.is_nan() {
                SLOT_NAN
            } else {
                let t = &c.thresholds[c.bounds[s] as usize..c.bounds[s + 1] as usize];
                let bin = t.partition_point(|x| *x < v) as u32;
                bin | if v.abs() <= 1e-35 { SLOT_ZERO } else { 0 }
            };
        }
        let inner = (1usize << c.depth) - 1;
        #[inline(always)]
        fn step(splits: &[u32], i: usize, row: &[u32; MAX_SLOTS]) -> usize {
            let s = splits[i];
            let r = row[((s >> 16) & 0xFF) as usize];
            let special = (r & SLOT_NAN != 0) | ((s & ZERO_IS_MISSING != 0) & (r & SLOT_ZERO != 0));
            let above = (r & 0xFFFF) > (s & 0xFFFF);
            let right = (special & (s & SPECIAL_RIGHT != 0)) | (!special & above);
            2 * i + 1 + usize::from(right)
        }
        let trees = c.splits.len() / inner;
        let mut sum = 0.0;
        let mut t = 0;
        const W: usize = 8;
        while t + W <= trees {
            let mut at = [0usize; W];
            let block = &c.splits[t * inner..(t + W) * inner];
            for _ in 0..c.depth {
                for (k, i) in at.iter_mut().enumerate() {
                    *i = step(&block[k * inner..(k + 1) * inner], *i, &row);
                }
            }
            let l = &c.leaves[t * (inner + 1)..(t + W) * (inner + 1)];
            // Added one by one, in tree order, as LightGBM adds them.
            for (k, i) in at.iter().enumerate() {
                sum += l[k * (inner + 1) + i - inner];
            }
            t += W;
        }
        while t < trees {
            let splits = &c.splits[t * inner..(t + 1) * inner];
            let mut i = 0;
            for _ in 0..c.depth {
                i = step(splits, i, &row);
            }
            sum += c.leaves[t * (inner + 1) + i - inner];
            t += 1;
        }
        sum
    }

    /// One step of the pointer walk: the child link `n` sends `fv` to.
    #[inline]
    fn child(n: &Node, fv: &FeatureVector) -> i32 {
        let mut v = fv.0[n.feature as usize];
        let missing_nan = n.flags & MISSING_NAN != 0;
        if v.is_nan() && !missing_nan {
            v = 0.0;
        }
        let default =
            (n.flags & MISSING_ZERO != 0 && v.abs() <= 1e-35) || (missing_nan && v.is_nan());
        if default {
            if n.flags & DEFAULT_LEFT != 0 {
                n.left
            } else {
                n.right
            }
        } else if v <= n.threshold {
            n.left
        } else {
            n.right
        }
    }

    /// The pointer walk, for trees too deep to lay out complete.
    fn raw_walk(&self, fv: &FeatureVector) -> f64 {
        let mut sum = 0.0;
        for &root in &self.roots {
            let mut at = root;
            while at >= 0 {
                at = Self::child(&self.nodes[at as usize], fv);
            }
            sum += self.leaves[!at as usize];
        }
        sum
    }

    /// Why the model scored `fv` as it did: each feature's contribution to
    /// the raw score, by the path each tree takes (a split on feature `f`
    /// moves the prediction from its node's value to its child's: that
    /// change is `f`'s). The contributions and the returned bias (the sum
    /// of the roots' values) add up to [`Model::raw`] up to rounding.
    /// Sorted by size, largest first; features that never moved the
    /// prediction are left out. `None` when the file carried no
    /// `internal_value`s. For the explain only: it allocates.
    pub fn contributions(&self, fv: &FeatureVector) -> Option<(f64, Vec<Contribution>)> {
        if self.node_values.len() != self.nodes.len() {
            return None;
        }
        let value = |link: i32| {
            if link >= 0 {
                self.node_values[link as usize]
            } else {
                self.leaves[!link as usize]
            }
        };
        let mut by_feature = vec![0.0f64; CATALOGUE.len()];
        let mut bias = 0.0;
        for &root in &self.roots {
            bias += value(root);
            let mut at = root;
            while at >= 0 {
                let n = &self.nodes[at as usize];
                let next = Self::child(n, fv);
                by_feature[n.feature as usize] += value(next) - value(at);
                at = next;
            }
        }
        let mut out: Vec<Contribution> = by_feature
            .iter()
            .enumerate()
            .filter(|(_, v)| **v != 0.0)
            .map(|(i, v)| Contribution {
                feature: CATALOGUE[i].name,
                value: *v,
            })
            .collect();
        out.sort_by(|a, b| b.value.abs().total_cmp(&a.value.abs()));
        Some((bias, out))
    }

    /// The model's output: a probability for a binary model.
    pub fn score(&self, fv: &FeatureVector) -> f64 {
        let raw = self.raw(fv);
        match self.output {
            Output::Sigmoid(k) => 1.0 / (1.0 + (-k * raw).exp()),
            Output::Raw => raw,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two trees over two features, written as LightGBM writes them.
    const SMALL: &str = "tree\nversion=v4\nnum_class=1\nnum_tree_per_iteration=1\nlabel_index=0\nmax_feature_idx=1\nobjective=binary sigmoid:1\nfeature_names=payer.count_1h payee_distinct_payers_10m\nfeature_infos=[1:9] [1:9]\ntree_sizes=1 1\n\nTree=0\nnum_leaves=3\nnum_cat=0\nsplit_feature=0 1\nsplit_gain=1 1\nthreshold=2.5 4.5\ndecision_type=2 10\nleft_child=-1 -2\nright_child=1 -3\nleaf_value=-1 0.5 2\nleaf_weight=1 1 1\nleaf_count=1 1 1\ninternal_value=0 0\ninternal_weight=1 1\ninternal_count=2 2\nis_linear=0\nshrinkage=1\n\n\nTree=1\nnum_leaves=1\nnum_cat=0\nsplit_feature=\nsplit_gain=\nthreshold=\ndecision_type=\nleft_child=\nright_child=\nleaf_value=0.25\nleaf_weight=\nleaf_count=\ninternal_value=\ninternal_weight=\ninternal_count=\nis_linear=0\nshrinkage=1\n\n\nend of trees\n";

    fn fv(count_1h: f64, fan_in: f64) -> FeatureVector {
        let mut v = FeatureVector::default();
        v.set(F::PayerCount1h, count_1h);
        v.set(F::PayeeDistinctPayers10m, fan_in);
        v
    }

    #[test]
    fn walks_the_trees_as_lightgbm_does() {
        let m = Model::parse("m.txt", SMALL).expect("valid");
        assert_eq!(m.trees(), 2);
        assert_eq!(
            m.features,
            vec!["payer.count_1h", "payee.distinct_payers_10m"]
        );
        assert_eq!(m.raw(&fv(1.0, 9.0)), -1.0 + 0.25, "count <= 2.5: leaf 0");
        assert_eq!(m.raw(&fv(5.0, 3.0)), 0.5 + 0.25, "fan-in <= 4.5: leaf 1");
        assert_eq!(m.raw(&fv(5.0, 7.0)), 2.0 + 0.25);
        // Node 1 sends a missing value the default way (left: 10 = NaN +
        // default left); node 0 (missing type none) reads it as 0.
        assert_eq!(m.raw(&fv(5.0, f64::NAN)), 0.5 + 0.25);
        assert_eq!(m.raw(&fv(f64::NAN, 9.0)), -1.0 + 0.25);
        let p = m.score(&fv(5.0, 7.0));
        assert!((p - 1.0 / (1.0 + (-2.25f64).exp())).abs() < 1e-15);
    }

    /// The branch-free layout and the pointer walk agree on every kind of
    /// value: ordinary, on the threshold, zero, missing.
    #[test]
    fn the_complete_layout_walks_as_the_pointer_walk_does() {
        let m = Model::parse("m.txt", SMALL).expect("valid");
        let c = m.complete.as_ref().expect("shallow: laid out complete");
        assert_eq!(c.depth, 2);
        let values = [f64::NAN, 0.0, -1.0, 2.5, 2.6, 4.5, 4.6, 9.0];
        for a in values {
            for b in values {
                let v = fv(a, b);
                let (x, y) = (Model::raw_complete(c, &v), m.raw_walk(&v));
                assert!(x == y, "{a} {b}: {x} vs {y}");
            }
        }
        // Zero as missing (decision_type 6: zero, default left) on node 0.
        let z = Model::parse(
            "z.txt",
            &SMALL.replace("decision_type=2 10", "decision_type=6 10"),
        )
        .expect("valid");
        let c = z.complete.as_ref().expect("complete");
        for a in values {
            for b in values {
                let v = fv(a, b);
                assert_eq!(
                    Model::raw_complete(c, &v).to_bits(),
                    z.raw_walk(&v).to_bits(),
                    "{a} {b}"
                );
            }
        }
    }

    /// The explain's contributions add up to the raw score, name the
    /// features on the path, and put the biggest mover first.
    #[test]
    fn contributions_add_up_to_the_raw_score() {
        // Give the splits internal values (root 0.3, node 1 1.1).
        let m = Model::parse(
            "m.txt",
            &SMALL.replace("internal_value=0 0\n", "internal_value=0.3 1.1\n"),
        )
        .expect("valid");
        assert!(m.version.starts_with("sha256:") && m.version.len() == 19);
        for (a, b) in [(1.0, 9.0), (5.0, 3.0), (5.0, 7.0), (f64::NAN, f64::NAN)] {
            let v = fv(a, b);
            let (bias, c) = m.contributions(&v).expect("has internal values");
            let total: f64 = bias + c.iter().map(|c| c.value).sum::<f64>();
            assert!(
                (total - m.raw(&v)).abs() < 1e-12,
                "{a} {b}: {total} vs {}",
                m.raw(&v)
            );
            assert!((bias - (0.3 + 0.25)).abs() < 1e-12);
        }
        let (_, c) = m.contributions(&fv(5.0, 7.0)).expect("contributions");
        // 0.3 -> 1.1 on payer.count_1h (+0.8), 1.1 -> 2 on the fan-in (+0.9).
        assert_eq!(c[0].feature, "payee.distinct_payers_10m");
        assert!((c[0].value - 0.9).abs() < 1e-12);
        assert_eq!(c[1].feature, "payer.count_1h");
        assert!((c[1].value - 0.8).abs() < 1e-12);
        // Without internal values there is nothing to explain with.
        let bare =
            Model::parse("m.txt", &SMALL.replace("internal_value=0 0\n", "")).expect("valid");
        assert!(bare.contributions(&fv(5.0, 7.0)).is_none());
    }

    /// Random trees over three features with every missing-value rule,
    /// and rows whose values sit on thresholds, at zero, -0 and NaN: the
    /// binned layout's answer is the pointer walk's, bit for bit.
    #[test]
    fn the_binned_layout_agrees_with_the_pointer_walk_on_random_trees() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let points = [-2.0, -0.5, 0.0, 0.5, 1.0, 1.5, 3.0];
        let mut text = String::from(
            "tree\nversion=v4\nnum_class=1\nnum_tree_per_iteration=1\nobjective=binary sigmoid:1\nfeature_names=payer.count_1h payer.sum_1h payee.age_secs\n\n",
        );
        let (depth, trees) = (4usize, 40);
        let inner = (1 << depth) - 1;
        for t in 0..trees {
            let child = |c: usize| {
                if c < inner {
                    c as i64
                } else {
                    -((c - inner) as i64) - 1
                }
            };
            let mut cols: [Vec<String>; 6] = Default::default();
            for i in 0..inner {
                cols[0].push(rng.gen_range(0..3).to_string());
                cols[1].push(points[rng.gen_range(0..points.len())].to_string());
                cols[2].push([0, 2, 4, 6, 8, 10][rng.gen_range(0..6)].to_string());
                cols[3].push(child(2 * i + 1).to_string());
                cols[4].push(child(2 * i + 2).to_string());
            }
            for _ in 0..=inner {
                cols[5].push(format!("{}", rng.gen_range(-1.0..1.0f64)));
            }
            text.push_str(&format!(
                "Tree={t}\nnum_leaves={}\nnum_cat=0\nsplit_feature={}\nthreshold={}\ndecision_type={}\nleft_child={}\nright_child={}\nleaf_value={}\nis_linear=0\n\n",
                inner + 1,
                cols[0].join(" "),
                cols[1].join(" "),
                cols[2].join(" "),
                cols[3].join(" "),
                cols[4].join(" "),
                cols[5].join(" ")
            ));
        }
        text.push_str("end of trees\n");
        let m = Model::parse("random.txt", &text).expect("valid");
        let c = m.complete.as_ref().expect("complete");
        let values = [
            f64::NAN,
            0.0,
            -0.0,
            1e-36,
            -2.0,
            -0.5,
            0.5,
            0.75,
            1.0,
            1.5,
            3.0,
            9.0,
        ];
        let f = [F::PayerCount1h, F::PayerSum1h, F::PayeeAgeSecs];
        for a in values {
            for b in values {
                for d in values {
                    let mut v = FeatureVector::default();
                    v.set(f[0], a);
                    v.set(f[1], b);
                    v.set(f[2], d);
                    assert_eq!(
                        Model::raw_complete(c, &v).to_bits(),
                        m.raw_walk(&v).to_bits(),
                        "{a} {b} {d}"
                    );
                }
            }
        }
    }

    #[test]
    fn bad_models_are_refused_by_name() {
        let err = |t: &str| Model::parse("m.txt", t).unwrap_err().to_string();
        assert!(err(&SMALL.replace("payer.count_1h", "payer.shoe_size"))
            .contains("\"payer.shoe_size\" is not in"));
        assert!(err(&SMALL.replace("payer.count_1h", "model.score"))
            .contains("\"model.score\" is not in"));
        assert!(err(&SMALL.replace(
            "objective=binary sigmoid:1",
            "objective=multiclass num_class:3"
        ))
        .contains("unsupported"));
        assert!(err(&SMALL.replace(
            "num_cat=0\nsplit_feature=0 1",
            "num_cat=1\nsplit_feature=0 1"
        ))
        .contains("categorical"));
        assert!(err(&SMALL.replace("left_child=-1 -2", "left_child=-1"))
            .contains("left_child has 1 entries"));
        assert!(err(&SMALL.replace("end of trees\n", "")).contains("cut short"));
        assert!(err("not a model").contains("not a LightGBM"));
    }
}
