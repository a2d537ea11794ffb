//! Merkle tree math of RFC 9162 §2.1 (the RFC 6962 hashing of Certificate Transparency): leaf
//! and node hashes, the tree head of any size, inclusion and consistency proofs, and their
//! verification.
//!
//! The tree is read through the hashes of its complete, aligned subtrees: `node(level, index)`
//! covers leaves `index << level .. (index + 1) << level`. A log that keeps those (a leaf adds
//! at most one per level, [`Frontier::push`]) answers any head or proof in O(log n) reads. No
//! crate fits this: the Rust Merkle crates keep the whole tree in memory, this one is stored.
//! Checked against the RFC 6962 test vectors of transparency-dev/merkle (the tests below).

use ring::digest::{Context, SHA256};

pub type Hash = [u8; 32];

/// RFC 9162 §2.1.1: `SHA-256(0x00 || data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut ctx = Context::new(&SHA256);
    ctx.update(&[0x00]);
    ctx.update(data);
    finish(ctx)
}

/// RFC 9162 §2.1.1: `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut ctx = Context::new(&SHA256);
    ctx.update(&[0x01]);
    ctx.update(left);
    ctx.update(right);
    finish(ctx)
}

/// The head of the empty tree: `SHA-256()`.
pub fn empty_root() -> Hash {
    finish(Context::new(&SHA256))
}

fn finish(ctx: Context) -> Hash {
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// The right edge of a tree: the heads of its complete subtrees, largest first, one per set
/// bit of its size. Enough to append a leaf (which nodes it completes) and to compute the
/// head, without reading any stored node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Frontier(Vec<(u8, Hash)>);

impl Frontier {
    /// The frontier of the tree of `size` leaves, read from its stored nodes.
    pub fn of_size<E>(size: u64, node: impl Fn(u8, u64) -> Result<Hash, E>) -> Result<Self, E> {
        let mut out = Vec::new();
        let mut start = 0u64;
        for level in (0..64u8).rev() {
            if size & (1 << level) != 0 {
                out.push((level, node(level, start >> level)?));
                start += 1 << level;
            }
        }
        Ok(Frontier(out))
    }

    /// The heads of the complete subtrees, largest first: `(level, hash)`.
    pub fn heads(&self) -> &[(u8, Hash)] {
        &self.0
    }

    /// The frontier of a tree of `size` leaves from its heads (as [`Frontier::heads`] gave
    /// them), or `None` when they are not one head per set bit of `size`, largest first.
    pub fn from_heads(size: u64, heads: Vec<(u8, Hash)>) -> Option<Self> {
        let levels: Vec<u8> = (0..64u8).rev().filter(|l| size & (1 << l) != 0).collect();
        let given: Vec<u8> = heads.iter().map(|(l, _)| *l).collect();
        (levels == given).then_some(Frontier(heads))
    }

    /// Appends leaf number `index` (the tree's size before it): returns the nodes it completes,
    /// lowest first, as `(level, index at that level, hash)`, the leaf itself at level 0.
    pub fn push(&mut self, index: u64, leaf: Hash) -> Vec<(u8, u64, Hash)> {
        let mut completed = vec![(0, index, leaf)];
        let (mut level, mut hash) = (0u8, leaf);
        while let Some(&(left_level, left)) = self.0.last() {
            if left_level != level {
                break;
            }
            self.0.pop();
            level += 1;
            hash = node_hash(&left, &hash);
            completed.push((level, index >> level, hash));
        }
        self.0.push((level, hash));
        completed
    }

    /// The tree head (RFC 9162 §2.1.1): the subtrees folded from the right.
    pub fn root(&self) -> Hash {
        let mut heads = self.0.iter().rev();
        let Some(&(_, mut root)) = heads.next() else {
            return empty_root();
        };
        for (_, left) in heads {
            root = node_hash(left, &root);
        }
        root
    }
}

impl From<Frontier> for CompactRange {
    /// The right edge of the tree of `size` leaves is the compact range `0 .. size`.
    fn from(frontier: Frontier) -> Self {
        let end = frontier.0.iter().map(|(level, _)| 1u64 << level).sum();
        CompactRange {
            begin: 0,
            end,
            nodes: frontier.0,
        }
    }
}

/// A compact range (the tlog "compact range" of transparency-dev/merkle's `compact` package):
/// the heads of the fewest complete, aligned subtrees that exactly cover leaves
/// `begin .. end`, left to right. Two ranges over adjacent leaves merge into the range over
/// both, so leaves hashed in separate pieces (the verification's parallel segments) give the
/// tree head of every prefix: the range `0 .. n` is the right edge of the tree of n leaves,
/// and its head is [`CompactRange::root`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompactRange {
    begin: u64,
    end: u64,
    /// `(level, hash)`, left to right; each covers `2^level` leaves from where the previous
    /// one ends, starting at `begin`.
    nodes: Vec<(u8, Hash)>,
}

/// Two compact ranges that do not meet cannot be merged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a compact range ending at leaf {end} cannot be joined to one starting at {begin}")]
pub struct RangeGap {
    pub end: u64,
    pub begin: u64,
}

impl CompactRange {
    /// The empty range at leaf `begin`.
    pub fn new(begin: u64) -> Self {
        CompactRange {
            begin,
            end: begin,
            nodes: Vec::new(),
        }
    }

    pub fn begin(&self) -> u64 {
        self.begin
    }

    pub fn end(&self) -> u64 {
        self.end
    }

    /// Appends leaf number `end` (its leaf hash).
    pub fn append(&mut self, leaf: Hash) {
        self.push(0, leaf);
    }

    /// Appends the range over the leaves right after this one's: `self` then covers both.
    pub fn merge(&mut self, other: CompactRange) -> Result<(), RangeGap> {
        if other.begin != self.end {
            return Err(RangeGap {
                end: self.end,
                begin: other.begin,
            });
        }
        for (level, hash) in other.nodes {
            self.push(level, hash);
        }
        Ok(())
    }

    /// The tree head over leaves `0 .. end` (RFC 9162 §2.1.1), if the range starts at leaf 0:
    /// the subtrees folded from the right, as [`Frontier::root`].
    pub fn root(&self) -> Option<Hash> {
        if self.begin != 0 {
            return None;
        }
        let mut nodes = self.nodes.iter().rev();
        let Some(&(_, mut root)) = nodes.next() else {
            return Some(empty_root());
        };
        for (_, left) in nodes {
            root = node_hash(left, &root);
        }
        Some(root)
    }

    /// Appends the complete subtree of `2^level` leaves starting at leaf `end` (aligned there:
    /// every node a range holds, and every leaf, is), then joins it with its left siblings.
    fn push(&mut self, level: u8, hash: Hash) {
        let (mut level, mut hash) = (level, hash);
        self.end += 1 << level;
        // The node of `level` ending at `end` is a right child when its index is odd; then
        // its left sibling is the node before it, if the range holds that one whole.
        while let Some(&(left_level, left)) = self.nodes.last() {
            let index = (self.end - (1 << level)) >> level;
            if left_level != level || index & 1 == 0 {
                break;
            }
            self.nodes.pop();
            hash = node_hash(&left, &hash);
            level += 1;
        }
        self.nodes.push((level, hash));
    }
}

/// The largest power of two smaller than `n` (`n > 1`).
fn split(n: u64) -> u64 {
    1 << (63 - (n - 1).leading_zeros())
}

/// MTH of leaves `start .. start + len` (`len > 0`), where `start` is a multiple of the largest
/// power of two not above `len`, as every range the RFC's recursions ask for is.
fn range_hash<E>(
    start: u64,
    len: u64,
    node: &impl Fn(u8, u64) -> Result<Hash, E>,
) -> Result<Hash, E> {
    if len.is_power_of_two() {
        let level = len.trailing_zeros();
        // level < 64: len is a u64 power of two.
        return node(level as u8, start >> level);
    }
    let k = split(len);
    let left = range_hash(start, k, node)?;
    let right = range_hash(start + k, len - k, node)?;
    Ok(node_hash(&left, &right))
}

/// The tree head of the first `size` leaves (RFC 9162 §2.1.1).
pub fn root<E>(size: u64, node: impl Fn(u8, u64) -> Result<Hash, E>) -> Result<Hash, E> {
    if size == 0 {
        return Ok(empty_root());
    }
    range_hash(0, size, &node)
}

/// The inclusion proof of leaf `index` in the tree of `size` leaves (RFC 9162 §2.1.3.1), or
/// `None` when `index >= size`.
pub fn inclusion_proof<E>(
    index: u64,
    size: u64,
    node: impl Fn(u8, u64) -> Result<Hash, E>,
) -> Result<Option<Vec<Hash>>, E> {
    if index >= size {
        return Ok(None);
    }
    let mut proof = Vec::new();
    path(index, 0, size, &node, &mut proof)?;
    Ok(Some(proof))
}

/// PATH(m, D[start : start + n]), appended to `out` bottom-up.
fn path<E>(
    m: u64,
    start: u64,
    n: u64,
    node: &impl Fn(u8, u64) -> Result<Hash, E>,
    out: &mut Vec<Hash>,
) -> Result<(), E> {
    if n <= 1 {
        return Ok(());
    }
    let k = split(n);
    if m < k {
        path(m, start, k, node, out)?;
        out.push(range_hash(start + k, n - k, node)?);
    } else {
        path(m - k, start + k, n - k, node, out)?;
        out.push(range_hash(start, k, node)?);
    }
    Ok(())
}

/// The consistency proof from the tree of `first` leaves to the tree of `second` (RFC 9162
/// §2.1.4.1): empty when `first` is 0 or equal to `second`; `None` when `first > second`.
pub fn consistency_proof<E>(
    first: u64,
    second: u64,
    node: impl Fn(u8, u64) -> Result<Hash, E>,
) -> Result<Option<Vec<Hash>>, E> {
    if first > second {
        return Ok(None);
    }
    let mut proof = Vec::new();
    if first > 0 && first < second {
        subproof(first, 0, second, true, &node, &mut proof)?;
    }
    Ok(Some(proof))
}

/// SUBPROOF(m, D[start : start + n], b), appended to `out` bottom-up.
fn subproof<E>(
    m: u64,
    start: u64,
    n: u64,
    complete: bool,
    node: &impl Fn(u8, u64) -> Result<Hash, E>,
    out: &mut Vec<Hash>,
) -> Result<(), E> {
    if m == n {
        if !complete {
            out.push(range_hash(start, n, node)?);
        }
        return Ok(());
    }
    let k = split(n);
    if m <= k {
        subproof(m, start, k, complete, node, out)?;
        out.push(range_hash(start + k, n - k, node)?);
    } else {
        subproof(m - k, start + k, n - k, false, node, out)?;
        out.push(range_hash(start, k, node)?);
    }
    Ok(())
}

/// Why a proof does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("leaf index {index} is not in a tree of {size} leaves")]
    IndexOutOfRange { index: u64, size: u64 },
    #[error("a tree of {first} leaves cannot be a prefix of one of {second}")]
    SizesReversed { first: u64, second: u64 },
    #[error("the proof has the wrong number of hashes")]
    WrongLength,
    #[error("the proof does not lead to the expected tree head")]
    RootMismatch,
}

/// RFC 9162 §2.1.3.2: whether `proof` shows leaf `index` (hash `leaf`) in the tree of `size`
/// leaves whose head is `root`.
pub fn verify_inclusion(
    index: u64,
    size: u64,
    leaf: &Hash,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let (mut fn_, mut sn) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if sn == 0 {
            return Err(ProofError::WrongLength);
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = node_hash(p, &r);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if sn != 0 {
        return Err(ProofError::WrongLength);
    }
    if r != *root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// RFC 9162 §2.1.4.2: whether `proof` shows the tree of `first` leaves (head `first_root`) is
/// a prefix of the tree of `second` leaves (head `second_root`). The empty tree is a prefix of
/// every tree, and a tree of itself, each with an empty proof.
pub fn verify_consistency(
    first: u64,
    second: u64,
    first_root: &Hash,
    second_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    if first > second {
        return Err(ProofError::SizesReversed { first, second });
    }
    if first == 0 || first == second {
        if !proof.is_empty() {
            return Err(ProofError::WrongLength);
        }
        if first == second && first_root != second_root {
            return Err(ProofError::RootMismatch);
        }
        return Ok(());
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if first.is_power_of_two() {
        path.push(*first_root);
    }
    path.extend_from_slice(proof);
    let Some((head, rest)) = path.split_first() else {
        return Err(ProofError::WrongLength);
    };
    let (mut fn_, mut sn) = (first - 1, second - 1);
    while fn_ & 1 == 1 {
        fn_ >>= 1;
        sn >>= 1;
    }
    let (mut fr, mut sr) = (*head, *head);
    for c in rest {
        if sn == 0 {
            return Err(ProofError::WrongLength);
        }
        if fn_ & 1 == 1 || fn_ == sn {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if sn != 0 {
        return Err(ProofError::WrongLength);
    }
    if fr != *first_root || sr != *second_root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "in tests a panic on an unexpected error is the failure report"
)]
mod tests {
    //! Vectors: transparency-dev/merkle, proof/verify_test.go (Apache-2.0, Copyright 2017
    //! Google LLC), the RFC 6962 reference vectors of Certificate Transparency.

    use std::collections::HashMap;
    use std::convert::Infallible;

    use super::*;

    const LEAVES: [&str; 8] = [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ];
    const ROOTS: [&str; 8] = [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];
    /// (leaf number, 1-based as in the source; tree size; proof).
    const INCLUSION: [(u64, u64, &[&str]); 5] = [
        (1, 1, &[]),
        (
            1,
            8,
            &[
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        ),
        (
            6,
            8,
            &[
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
        (
            3,
            3,
            &["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"],
        ),
        (
            2,
            5,
            &[
                "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            ],
        ),
    ];
    const CONSISTENCY: [(u64, u64, &[&str]); 5] = [
        (1, 1, &[]),
        (
            1,
            8,
            &[
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        ),
        (
            6,
            8,
            &[
                "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
        (
            2,
            5,
            &[
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            ],
        ),
        (
            6,
            7,
            &[
                "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
    ];

    fn h(hex_str: &str) -> Hash {
        hex::decode(hex_str).unwrap().try_into().unwrap()
    }

    fn hashes(list: &[&str]) -> Vec<Hash> {
        list.iter().map(|s| h(s)).collect()
    }

    /// A tree grown leaf by leaf as a store grows it: only the nodes `completed_by` returns.
    #[derive(Default)]
    struct Tree {
        nodes: HashMap<(u8, u64), Hash>,
        frontier: Frontier,
        size: u64,
    }

    impl Tree {
        fn push(&mut self, data: &[u8]) {
            for (level, index, hash) in self.frontier.push(self.size, leaf_hash(data)) {
                self.nodes.insert((level, index), hash);
            }
            self.size += 1;
            // The frontier agrees with the stored nodes at every size.
            assert_eq!(
                Frontier::of_size(self.size, self.node()).unwrap(),
                self.frontier
            );
            assert_eq!(self.frontier.root(), self.root(self.size));
        }

        fn node(&self) -> impl Fn(u8, u64) -> Result<Hash, Infallible> + '_ {
            |l, i| Ok(self.nodes[&(l, i)])
        }

        fn root(&self, size: u64) -> Hash {
            root(size, self.node()).unwrap()
        }
    }

    fn vector_tree() -> Tree {
        let mut tree = Tree::default();
        for leaf in LEAVES {
            tree.push(&hex::decode(leaf).unwrap());
        }
        tree
    }

    /// MTH straight from the RFC's definition, over the leaf data.
    fn reference_root(leaves: &[Vec<u8>]) -> Hash {
        match leaves.len() {
            0 => empty_root(),
            1 => leaf_hash(&leaves[0]),
            n => {
                let k = split(n as u64) as usize;
                node_hash(&reference_root(&leaves[..k]), &reference_root(&leaves[k..]))
            }
        }
    }

    #[test]
    fn tree_heads_match_the_rfc6962_vectors() {
        let tree = vector_tree();
        for (size, expected) in ROOTS.iter().enumerate() {
            assert_eq!(tree.root(size as u64 + 1), h(expected), "size {}", size + 1);
        }
        assert_eq!(
            hex::encode(empty_root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn inclusion_proofs_match_the_vectors_and_verify() {
        let tree = vector_tree();
        for (leaf, size, expected) in INCLUSION {
            let index = leaf - 1;
            let proof = inclusion_proof(index, size, tree.node()).unwrap().unwrap();
            assert_eq!(proof, hashes(expected), "leaf {index} of {size}");
            let leaf_hash = leaf_hash(&hex::decode(LEAVES[index as usize]).unwrap());
            let root = h(ROOTS[size as usize - 1]);
            verify_inclusion(index, size, &leaf_hash, &proof, &root).unwrap();
            // The corruptions of the source's verifier test: none may verify.
            let mut bad: Vec<(u64, u64, Hash, Vec<Hash>, Hash)> = vec![
                (index.wrapping_sub(1), size, leaf_hash, proof.clone(), root),
                (index + 1, size, leaf_hash, proof.clone(), root),
                (index ^ 2, size, leaf_hash, proof.clone(), root),
                (index, size * 2, leaf_hash, proof.clone(), root),
                (index, size / 2, leaf_hash, proof.clone(), root),
                (index, size, [7; 32], proof.clone(), root),
                (index, size, leaf_hash, proof.clone(), empty_root()),
                (
                    index,
                    size,
                    leaf_hash,
                    [proof.clone(), vec![root]].concat(),
                    root,
                ),
                (
                    index,
                    size,
                    leaf_hash,
                    [vec![root], proof.clone()].concat(),
                    root,
                ),
            ];
            for i in 0..proof.len() {
                let mut flipped = proof.clone();
                flipped[i][0] ^= 8;
                bad.push((index, size, leaf_hash, flipped, root));
            }
            if !proof.is_empty() {
                bad.push((
                    index,
                    size,
                    leaf_hash,
                    proof[..proof.len() - 1].to_vec(),
                    root,
                ));
            }
            for (i, s, l, p, r) in bad {
                assert!(
                    verify_inclusion(i, s, &l, &p, &r).is_err(),
                    "a corrupted proof for leaf {i} of {s} verified"
                );
            }
        }
        assert_eq!(inclusion_proof(8, 8, tree.node()).unwrap(), None);
    }

    #[test]
    fn consistency_proofs_match_the_vectors_and_verify() {
        let tree = vector_tree();
        for (first, second, expected) in CONSISTENCY {
            let proof = consistency_proof(first, second, tree.node())
                .unwrap()
                .unwrap();
            assert_eq!(proof, hashes(expected), "{first} → {second}");
            let (r1, r2) = (h(ROOTS[first as usize - 1]), h(ROOTS[second as usize - 1]));
            verify_consistency(first, second, &r1, &r2, &proof).unwrap();
            if proof.is_empty() {
                continue;
            }
            let mut bad: Vec<(u64, u64, Hash, Hash, Vec<Hash>)> = vec![
                (first - 1, second, r1, r2, proof.clone()),
                (first + 1, second, r1, r2, proof.clone()),
                (first ^ 2, second, r1, r2, proof.clone()),
                (first, second * 2, r1, r2, proof.clone()),
                (first, second / 2, r1, r2, proof.clone()),
                (first, second, [9; 32], r2, proof.clone()),
                (first, second, r1, [9; 32], proof.clone()),
                (first, second, r2, r1, proof.clone()),
                (first, second, r1, r2, Vec::new()),
                (first, second, r1, r2, [proof.clone(), vec![r1]].concat()),
                (first, second, r1, r2, [proof.clone(), vec![r2]].concat()),
                (first, second, r1, r2, [vec![r1], proof.clone()].concat()),
                (
                    first,
                    second,
                    r1,
                    r2,
                    [vec![proof[0]], proof.clone()].concat(),
                ),
                (first, second, r1, r2, proof[..proof.len() - 1].to_vec()),
            ];
            for i in 0..proof.len() {
                let mut flipped = proof.clone();
                flipped[i][0] ^= 16;
                bad.push((first, second, r1, r2, flipped));
            }
            for (f, s, a, b, p) in bad {
                assert!(
                    verify_consistency(f, s, &a, &b, &p).is_err(),
                    "a corrupted proof {f} → {s} verified"
                );
            }
        }
        // The edge cases of the source's table.
        let (a, b) = ([1; 32], [2; 32]);
        assert!(verify_consistency(0, 0, &a, &a, &[]).is_ok());
        assert!(verify_consistency(0, 1, &a, &b, &[]).is_ok());
        assert!(verify_consistency(1, 1, &b, &b, &[]).is_ok());
        assert!(verify_consistency(1, 1, &a, &b, &[]).is_err());
        assert!(verify_consistency(1, 0, &a, &b, &[]).is_err());
        assert!(verify_consistency(2, 1, &a, &b, &[]).is_err());
        assert!(verify_consistency(1, 2, &a, &b, &[]).is_err());
        assert!(verify_consistency(1, 1, &a, &a, &[empty_root()]).is_err());
        assert_eq!(consistency_proof(3, 2, tree.node()).unwrap(), None);
    }

    #[test]
    fn every_proof_of_a_grown_tree_verifies_against_the_reference_heads() {
        let mut tree = Tree::default();
        let mut leaves = Vec::new();
        for i in 0..70u32 {
            let data = i.to_be_bytes().repeat(i as usize % 3 + 1);
            tree.push(&data);
            leaves.push(data);
        }
        let heads: Vec<Hash> = (0..=leaves.len())
            .map(|n| reference_root(&leaves[..n]))
            .collect();
        for size in 0..=leaves.len() as u64 {
            assert_eq!(tree.root(size), heads[size as usize], "head of {size}");
            for index in 0..size {
                let proof = inclusion_proof(index, size, tree.node()).unwrap().unwrap();
                let leaf = leaf_hash(&leaves[index as usize]);
                verify_inclusion(index, size, &leaf, &proof, &heads[size as usize]).unwrap();
            }
            for first in 0..=size {
                let proof = consistency_proof(first, size, tree.node())
                    .unwrap()
                    .unwrap();
                verify_consistency(
                    first,
                    size,
                    &heads[first as usize],
                    &heads[size as usize],
                    &proof,
                )
                .unwrap();
            }
        }
        // A leaf adds one node per level it completes: 2n - popcount(n) nodes in all.
        let n = leaves.len() as u64;
        assert_eq!(tree.nodes.len() as u64, 2 * n - u64::from(n.count_ones()));
    }

    /// The compact range of `leaves[begin..end]`, appended leaf by leaf.
    fn range_of(leaves: &[Hash], begin: usize, end: usize) -> CompactRange {
        let mut range = CompactRange::new(begin as u64);
        for leaf in &leaves[begin..end] {
            range.append(*leaf);
        }
        range
    }

    #[test]
    fn compact_ranges_joined_in_any_split_give_the_reference_heads() {
        // Up to 40 leaves (0, 1, every power of two to 32 and the sizes either side), every
        // split into three pieces; the head is checked at every size (a checkpoint anywhere,
        // at a piece's boundary too) as the join of the pieces before and the piece up to it.
        let data: Vec<Vec<u8>> = (0..40u32).map(|i| i.to_be_bytes().to_vec()).collect();
        let leaves: Vec<Hash> = data.iter().map(|d| leaf_hash(d)).collect();
        let heads: Vec<Hash> = (0..=data.len())
            .map(|n| reference_root(&data[..n]))
            .collect();
        for n in 0..=leaves.len() {
            for a in 0..=n {
                for b in a..=n {
                    let mut joined = CompactRange::new(0);
                    for (begin, end) in [(0, a), (a, b), (b, n)] {
                        for (size, head) in heads.iter().enumerate().take(end + 1).skip(begin) {
                            let mut upto = joined.clone();
                            upto.merge(range_of(&leaves, begin, size)).unwrap();
                            assert_eq!(upto.root(), Some(*head), "{n} split {a}/{b}: {size}");
                        }
                        joined.merge(range_of(&leaves, begin, end)).unwrap();
                    }
                    assert_eq!(joined.root(), Some(heads[n]), "{n} split at {a}, {b}");
                    // Joined, the pieces are the fewest subtrees: the tree's right edge.
                    assert_eq!(joined, range_of(&leaves, 0, n));
                }
            }
        }
    }

    #[test]
    fn compact_ranges_over_many_pieces_and_past_powers_of_two() {
        // 1 100 leaves cut every k leaves, for k crossing many power-of-two boundaries.
        let leaves: Vec<Hash> = (0..1100u32).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        let mut frontier = Frontier::default();
        let mut heads = vec![frontier.root()];
        for (i, leaf) in leaves.iter().enumerate() {
            frontier.push(i as u64, *leaf);
            heads.push(frontier.root());
        }
        for k in [1usize, 2, 3, 7, 64, 127, 128, 129, 500, 1024, 1100] {
            let mut joined = CompactRange::new(0);
            let mut begin = 0;
            while begin < leaves.len() {
                let end = (begin + k).min(leaves.len());
                joined.merge(range_of(&leaves, begin, end)).unwrap();
                assert_eq!(joined.root(), Some(heads[end]), "pieces of {k}, to {end}");
                begin = end;
            }
            assert_eq!(joined, CompactRange::from(frontier.clone()));
        }
    }

    #[test]
    fn compact_ranges_refuse_gaps_and_overlaps_and_have_no_head_off_leaf_zero() {
        let leaves: Vec<Hash> = (0..8u32).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        let mut left = range_of(&leaves, 0, 3);
        assert_eq!(
            left.clone().merge(range_of(&leaves, 4, 6)),
            Err(RangeGap { end: 3, begin: 4 })
        );
        assert_eq!(
            left.clone().merge(range_of(&leaves, 2, 6)),
            Err(RangeGap { end: 3, begin: 2 })
        );
        let right = range_of(&leaves, 3, 8);
        assert_eq!(right.root(), None);
        assert_eq!((right.begin(), right.end()), (3, 8));
        left.merge(right).unwrap();
        assert_eq!(left.root(), Some(range_of(&leaves, 0, 8).root().unwrap()));
        // The empty range at 0 is the empty tree; an empty range joins anywhere it meets.
        assert_eq!(CompactRange::new(0).root(), Some(empty_root()));
        let mut empty = CompactRange::new(5);
        empty.merge(CompactRange::new(5)).unwrap();
        assert_eq!(
            CompactRange::from(Frontier::default()),
            CompactRange::new(0)
        );
    }
}
