// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

/// @title CheckpointAnchor
/// @notice Append-only record of transparency-log checkpoints (tree size and
///         root hash) per log origin. Each anchored checkpoint emits an event;
///         a checkpoint whose tree size does not exceed the last anchored size
///         of its log is rejected, so history on chain only grows.
/// @dev Only the deployer (the log operator's anchoring key) may submit: the
///      anchor proves what the operator committed to, and when.
contract CheckpointAnchor {
    struct Head {
        uint64 size;
        uint64 blockNumber;
        bytes32 root;
    }

    /// @notice The only account that may anchor (the log operator's anchoring key).
    ///         Without it anyone could anchor a huge size and block the log forever.
    address public immutable submitter;

    /// @dev Latest anchored head per log (keyed by keccak256 of the origin line).
    ///      Every earlier head stays readable in the event log.
    mapping(bytes32 => Head) private heads;

    /// @notice One per anchored checkpoint; indexed so auditors can look a
    ///         checkpoint up by log and size.
    event CheckpointAnchored(bytes32 indexed logId, uint64 indexed size, bytes32 root);

    error NotSubmitter();
    error SizeNotIncreasing(bytes32 logId, uint64 last, uint64 offered);
    error EmptyBatch();
    error LengthMismatch();

    constructor() {
        submitter = msg.sender;
    }

    /// @notice Anchor one checkpoint of a log.
    function anchor(bytes32 logId, uint64 size, bytes32 root) external {
        if (msg.sender != submitter) revert NotSubmitter();
        Head storage head = heads[logId];
        if (size <= head.size) revert SizeNotIncreasing(logId, head.size, size);
        emit CheckpointAnchored(logId, size, root);
        head.size = size;
        head.blockNumber = uint64(block.number);
        head.root = root;
    }

    /// @notice Anchor several checkpoints of one log in one transaction. Sizes
    ///         must strictly increase (from the last anchored size) or the
    ///         whole batch reverts; only the newest head is stored.
    function anchorBatch(bytes32 logId, uint64[] calldata sizes, bytes32[] calldata roots) external {
        if (msg.sender != submitter) revert NotSubmitter();
        uint256 n = sizes.length;
        if (n == 0) revert EmptyBatch();
        if (roots.length != n) revert LengthMismatch();
        Head storage head = heads[logId];
        uint64 last = head.size;
        for (uint256 i = 0; i < n; i++) {
            uint64 size = sizes[i];
            if (size <= last) revert SizeNotIncreasing(logId, last, size);
            emit CheckpointAnchored(logId, size, roots[i]);
            last = size;
        }
        head.size = last;
        head.blockNumber = uint64(block.number);
        head.root = roots[n - 1];
    }

    /// @notice The newest anchored head of a log (zeros if none).
    function latestHead(bytes32 logId) external view returns (uint64 size, bytes32 root, uint64 blockNumber) {
        Head storage head = heads[logId];
        return (head.size, head.root, head.blockNumber);
    }
}
