//! Typed errors of a sharded memory: which shard, which argument, what was expected.

use thiserror::Error;

/// What is wrong with a sharded memory or a retrieval from it.
#[derive(Clone, PartialEq, Error)]
pub enum ShardError {
    /// A memory needs at least one shard.
    #[error("a sharded memory needs at least one shard")]
    NoShards,
    /// A shard's tensor has the wrong rank or disagrees with the other shards (or the queries)
    /// on a size they must share.
    #[error("shard {shard}: {arg} expected shape {expected}, got {got:?}")]
    Shape {
        /// The shard's index.
        shard: usize,
        /// The argument (`keys`, `values`, `queries`, ...).
        arg: &'static str,
        /// The expected shape, in words.
        expected: String,
        /// The shape that was passed.
        got: Vec<usize>,
    },
    /// A shard's tensors are not of the memory's (or the queries') dtype.
    #[error("shard {shard}: {arg} has dtype {got}, expected {expected}")]
    Dtype {
        /// The shard's index.
        shard: usize,
        /// The argument.
        arg: &'static str,
        /// The dtype expected.
        expected: String,
        /// The dtype that was passed.
        got: String,
    },
    /// A shard's keys and values live on different devices.
    #[error("shard {shard}: keys on {keys} but values on {values}; a shard lives on one device")]
    Device {
        /// The shard's index.
        shard: usize,
        /// The keys' device.
        keys: String,
        /// The values' device.
        values: String,
    },
    /// A split asked for more shards than devices given, or no devices.
    #[error("split into {shards} shards over {devices} devices: give one device per shard (or one for all)")]
    Devices {
        /// Shards asked for.
        shards: usize,
        /// Devices given.
        devices: usize,
    },
    /// The communicator cannot serve these devices (e.g. the local one across CUDA devices
    /// that candle cannot copy between).
    #[error("communicator {name}: {reason}")]
    Communicator {
        /// The communicator.
        name: &'static str,
        /// Why.
        reason: String,
    },
}

hopfield_cuda::candle_error!(ShardError, "hopfield-core sharded memory");
