// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

/// @title teepay PaymentChannels (DESIGN.md §3)
/// @notice Deposits of payment channels between attested enclaves. Every channel state is
/// signed inside an enclave that signs a closing state only for its latest state and then
/// refuses further updates, so a close pays out at once: no challenge period, no watchtower.
/// A state may carry locks of in-flight multi-hop payments ("eject"): the first eject of an
/// instance fixes its outcome for every channel the instance locked. A swap lock ends by its
/// hub's decision certificate, recorded here by anyone who holds it, or, if no decision ever
/// reached anyone, by a REVERT claimed after the lock's deadline that no CONFIRM certificate
/// challenged in time (DESIGN §10).
/// A channel holds one asset (DESIGN §11): ether (`token` zero) or one ERC-20 token, named in
/// the channel id and in every signed state. Tokens are pulled with `transferFrom` and must
/// arrive whole: a token that charges a fee on transfer (the contract receives less than the
/// amount) is refused (`TokenAmountMismatch`); one that answers a transfer with `false` is
/// refused on the way in, and on the way out its payout is kept for the party to withdraw
/// (`owed`, `withdraw`) instead of blocking the close; one that returns nothing (USDT-style)
/// is accepted.
/// @dev `ChannelState` / `Lock` and the EIP-712 domain must match
/// `crates/teepay-types/src/channel.rs` exactly; the Rust tests sign there and close here.
contract PaymentChannels {
    struct Lock {
        bytes32 instanceId;
        uint256 amount;
        bool aToB;
        uint8 phase; // PHASE_PREPARED or PHASE_COMMITTED
        uint8 kind; // KIND_MULTI_HOP or KIND_CROSS_CHAIN
        /// The hub identity that drives the instance: only its certificates decide a swap lock.
        address hub;
        /// Swap locks: after this time a party may claim REVERT (0 for multi-hop locks).
        uint64 deadline;
    }

    /// A swap instance's outcome as its hub decided it, or a pending REVERT claim.
    struct SwapDecision {
        uint8 outcome; // 0 (none yet), OUTCOME_APPLY or OUTCOME_REVERT
        /// When an unchallenged REVERT claim becomes final (0: none claimed).
        uint64 revertFinalAt;
    }

    /// `depositA`/`depositB` are the deposits the signing enclave knows of: each may lag
    /// the contract's (a deposit mined after the state was signed), never exceed it, so no
    /// host report can move value between the parties, and a later deposit never makes a
    /// signed close stale: it is paid back to whoever made it.
    struct ChannelState {
        bytes32 channelId;
        /// The channel's asset: zero for ether, else the ERC-20 token's address.
        address token;
        uint64 version;
        uint256 depositA;
        uint256 depositB;
        uint256 balanceA;
        uint256 balanceB;
        Lock[] locks;
    }

    /// Parties + status, then both deposits, then the token (an ether channel leaves that
    /// slot empty: no extra write).
    struct Channel {
        address a;
        uint8 status;
        address b;
        uint128 depositA;
        uint128 depositB;
        address token;
    }

    uint8 internal constant STATUS_OPEN = 1;
    uint8 internal constant STATUS_CLOSED = 2;
    uint8 internal constant PHASE_PREPARED = 1;
    uint8 internal constant PHASE_COMMITTED = 2;
    uint8 internal constant KIND_MULTI_HOP = 0;
    uint8 internal constant KIND_CROSS_CHAIN = 1;
    uint8 internal constant OUTCOME_APPLY = 1;
    uint8 internal constant OUTCOME_REVERT = 2;
    /// Most locks a closing state may carry (enclaves cap locks per channel at this): a
    /// close at the cap, every lock resolved for the first time, stays far inside a block.
    uint256 public constant MAX_LOCKS = 483;

    bytes32 internal constant QUOTE_TAG = keccak256("teepay/quote/v1");
    /// A decision certificate is valid on every chain: it names no chain or contract.
    bytes32 internal constant DECISION_TAG = keccak256("teepay/decision/v1");
    bytes32 internal constant LOCK_TYPEHASH = keccak256(
        "Lock(bytes32 instanceId,uint256 amount,bool aToB,uint8 phase,uint8 kind,address hub,uint64 deadline)"
    );
    bytes32 internal constant CHANNEL_STATE_TYPEHASH = keccak256(
        "ChannelState(bytes32 channelId,address token,uint64 version,uint256 depositA,uint256 depositB,uint256 balanceA,uint256 balanceB,Lock[] locks)"
        "Lock(bytes32 instanceId,uint256 amount,bool aToB,uint8 phase,uint8 kind,address hub,uint64 deadline)"
    );
    bytes32 internal constant DOMAIN_TYPEHASH =
        keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)");
    /// secp256k1n / 2: larger `s` values are malleable copies (EIP-2).
    uint256 internal constant HALF_ORDER = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0;

    address public immutable authority;
    /// How long a REVERT claim on a swap lock waits for a CONFIRM certificate to override it.
    uint64 public immutable challengeWindow;
    address public owner;
    uint64 public channelCount;
    bytes32 internal immutable cachedDomainSeparator;
    uint256 internal immutable cachedChainId;

    mapping(bytes32 => bool) public allowedMeasurement;
    /// Enclave address → its attested measurement (zero: not registered).
    mapping(address => bytes32) public enclaveMeasurement;
    mapping(bytes32 => Channel) public channels;
    /// Instance id → OUTCOME_APPLY / OUTCOME_REVERT once its first eject fixed it.
    mapping(bytes32 => uint8) public instanceOutcome;
    /// Hub identity → swap instance id → its decision. Keyed by hub too: a certificate of
    /// any other key decides nothing for locks that name this hub.
    mapping(address => mapping(bytes32 => SwapDecision)) public swapDecisions;
    /// Party → token → payouts its token refused to transfer at a close, to `withdraw`.
    mapping(address => mapping(address => uint256)) public owed;

    event MeasurementAllowed(bytes32 indexed measurement, bool allowed);
    event EnclaveRegistered(address indexed enclave, bytes32 indexed measurement);
    event ChannelOpened(
        bytes32 indexed channelId,
        address indexed a,
        address indexed b,
        uint256 deposit,
        uint64 nonce,
        address token
    );
    event ChannelFunded(
        bytes32 indexed channelId, address indexed party, uint256 amount, uint256 depositA, uint256 depositB
    );
    event InstanceResolved(bytes32 indexed instanceId, bool applied, bytes32 indexed channelId);
    /// `signature` is the hub's certificate, so every watcher can hand it to its enclave.
    event DecisionRecorded(address indexed hub, bytes32 indexed instanceId, bool applied, bytes signature);
    event RevertClaimed(address indexed hub, bytes32 indexed instanceId, uint64 finalAt, bytes32 channelId);
    event ChannelClosed(
        bytes32 indexed channelId, uint64 version, uint256 payoutA, uint256 payoutB, bool ejected
    );
    /// A token transfer out failed: `amount` is kept for `party` to withdraw.
    event PayoutDeferred(address indexed party, address indexed token, uint256 amount);
    event Withdrawn(address indexed party, address indexed token, uint256 amount);

    error NotOwner();
    error MeasurementNotAllowed();
    error BadQuote();
    error AlreadyRegistered();
    error NotRegistered();
    error BadPeer();
    error AmountTooLarge();
    error ZeroAmount();
    error UnknownChannel();
    error ChannelNotOpen();
    error NotAParty();
    error BadSignature();
    error BadTotal();
    error BadDeposit();
    error TooManyLocks();
    error SwapLocked();
    error BadLock();
    error PayoutFailed();
    error DecisionFinal();
    error DeadlineNotReached();
    error NothingToClaim();
    error BadToken();
    error BadValue();
    error TokenTransferFailed();
    error TokenAmountMismatch();

    constructor(address authority_, bytes32[] memory measurements, uint64 challengeWindow_) {
        authority = authority_;
        challengeWindow = challengeWindow_;
        owner = msg.sender;
        for (uint256 i = 0; i < measurements.length; i++) {
            allowedMeasurement[measurements[i]] = true;
            emit MeasurementAllowed(measurements[i], true);
        }
        cachedChainId = block.chainid;
        cachedDomainSeparator = _domainSeparator();
    }

    // ---------------------------------------------------------------- administration

    function setMeasurementAllowed(bytes32 measurement, bool allowed) external {
        if (msg.sender != owner) revert NotOwner();
        allowedMeasurement[measurement] = allowed;
        emit MeasurementAllowed(measurement, allowed);
    }

    // ---------------------------------------------------------------- enclaves

    /// @notice Admits `enclave` given the attestation authority's quote over
    /// (measurement, enclave address, chain id). Anyone may submit a quote.
    function registerEnclave(address enclave, bytes32 measurement, bytes calldata quoteSig) external {
        if (!allowedMeasurement[measurement]) revert MeasurementNotAllowed();
        if (enclaveMeasurement[enclave] != bytes32(0)) revert AlreadyRegistered();
        bytes32 digest = keccak256(abi.encode(QUOTE_TAG, measurement, enclave, block.chainid));
        if (enclave == address(0) || _recover(digest, quoteSig) != authority) revert BadQuote();
        enclaveMeasurement[enclave] = measurement;
        emit EnclaveRegistered(enclave, measurement);
    }

    // ---------------------------------------------------------------- channels

    /// @notice Opens a channel of `token` (zero: ether) from the sending enclave to `peer`,
    /// funded with `amount`: ether sent with the call, or tokens pulled with `transferFrom`
    /// (approved beforehand). Both must be registered with a measurement still allowed.
    function openChannel(address peer, address token, uint256 amount)
        external
        payable
        returns (bytes32 channelId)
    {
        _requireActiveEnclave(msg.sender);
        _requireActiveEnclave(peer);
        if (peer == msg.sender) revert BadPeer();
        if (amount > type(uint128).max) revert AmountTooLarge();
        uint64 nonce = channelCount;
        channelCount = nonce + 1;
        // Bound to this chain, this deployment and this asset: the same parties and nonce
        // elsewhere give another id, so no enclave can confuse two channels (DESIGN §9, §11).
        channelId = keccak256(abi.encode(block.chainid, address(this), msg.sender, peer, nonce, token));
        channels[channelId] = Channel({
            a: msg.sender, status: STATUS_OPEN, b: peer, depositA: uint128(amount), depositB: 0, token: token
        });
        emit ChannelOpened(channelId, msg.sender, peer, amount, nonce, token);
        _receive(token, amount);
    }

    /// @notice Adds `amount` of the channel's asset to the sender's side of an open channel.
    function deposit(bytes32 channelId, uint256 amount) external payable {
        Channel storage ch = channels[channelId];
        _requireOpen(ch.status);
        if (amount == 0) revert ZeroAmount();
        uint256 depositA = ch.depositA;
        uint256 depositB = ch.depositB;
        if (msg.sender == ch.a) depositA += amount;
        else if (msg.sender == ch.b) depositB += amount;
        else revert NotAParty();
        // Both sides together must fit the enclaves' 128-bit amounts.
        if (depositA + depositB > type(uint128).max) revert AmountTooLarge();
        ch.depositA = uint128(depositA);
        ch.depositB = uint128(depositB);
        emit ChannelFunded(channelId, msg.sender, amount, depositA, depositB);
        _receive(ch.token, amount);
    }

    /// @notice Pays out what a token refused to transfer at a close (`PayoutDeferred`).
    function withdraw(address token) external {
        uint256 amount = owed[msg.sender][token];
        if (amount == 0) revert ZeroAmount();
        owed[msg.sender][token] = 0;
        emit Withdrawn(msg.sender, token, amount);
        if (!_tryTransfer(token, msg.sender, amount)) revert TokenTransferFailed();
    }

    /// @notice Closes (no locks) or ejects (multi-hop locks) a channel with a state signed by
    /// either party's enclave, and pays both parties out.
    function closeChannel(ChannelState calldata state, bytes calldata sig) external {
        Channel storage ch = channels[state.channelId];
        _requireOpen(ch.status);
        address a = ch.a;
        address b = ch.b;
        address token = ch.token;
        if (state.token != token) revert BadToken();
        address signer = _recover(_digest(state), sig);
        if (signer != a && signer != b) revert NotAParty();
        uint256 depositA = ch.depositA;
        uint256 depositB = ch.depositB;
        // The signer's enclave saw at most what was deposited on each side: a host that
        // over-reports its own side (or moves its peer's deposit to it) is refused here.
        if (state.depositA > depositA || state.depositB > depositB) revert BadDeposit();
        if (state.balanceA + state.balanceB != state.depositA + state.depositB) revert BadTotal();
        uint256 n = state.locks.length;
        if (n > MAX_LOCKS) revert TooManyLocks();

        uint256 payA = state.balanceA;
        uint256 payB = state.balanceB;
        for (uint256 i = 0; i < n; i++) {
            Lock calldata lock = state.locks[i];
            if (lock.phase != PHASE_PREPARED && lock.phase != PHASE_COMMITTED) revert BadLock();
            uint8 outcome;
            if (lock.kind == KIND_CROSS_CHAIN) {
                // Only the hub's decision (or an unchallenged REVERT claim) ends a swap lock.
                outcome = _swapOutcome(swapDecisions[lock.hub][lock.instanceId]);
                if (outcome == 0) revert SwapLocked();
            } else if (lock.kind == KIND_MULTI_HOP) {
                outcome = instanceOutcome[lock.instanceId];
                if (outcome == 0) {
                    outcome = lock.phase == PHASE_COMMITTED ? OUTCOME_APPLY : OUTCOME_REVERT;
                    instanceOutcome[lock.instanceId] = outcome;
                    emit InstanceResolved(lock.instanceId, outcome == OUTCOME_APPLY, state.channelId);
                }
            } else {
                revert BadLock();
            }
            if (outcome == OUTCOME_APPLY) {
                // A locked amount is still in its sender's balance until the instance applies.
                if (lock.aToB) {
                    if (lock.amount > payA) revert BadLock();
                    payA -= lock.amount;
                    payB += lock.amount;
                } else {
                    if (lock.amount > payB) revert BadLock();
                    payB -= lock.amount;
                    payA += lock.amount;
                }
            }
        }

        // Deposits the signer had not seen go back to whoever made them.
        payA += depositA - state.depositA;
        payB += depositB - state.depositB;

        // Effects before interactions: a re-entrant call finds the channel closed.
        ch.status = STATUS_CLOSED;
        emit ChannelClosed(state.channelId, state.version, payA, payB, n != 0);
        _pay(token, a, payA);
        _pay(token, b, payB);
    }

    // ---------------------------------------------------------------- swap decisions

    /// @notice Records the decision of swap instance `instanceId` certified by `hub` (the hub
    /// identity's signature over (tag, hub, instance, outcome)). Anyone may post it; a repeat
    /// changes nothing. A REVERT claim still in its challenge window yields to any
    /// certificate; once a claim is final, or a certificate recorded, the other outcome is
    /// refused.
    function recordDecision(address hub, bytes32 instanceId, bool applied, bytes calldata sig) external {
        bytes32 digest = keccak256(abi.encode(DECISION_TAG, hub, instanceId, applied));
        if (hub == address(0) || _recover(digest, sig) != hub) revert BadSignature();
        SwapDecision storage d = swapDecisions[hub][instanceId];
        uint8 outcome = applied ? OUTCOME_APPLY : OUTCOME_REVERT;
        uint8 current = _swapOutcome(d);
        if (current == outcome) return;
        if (current != 0) revert DecisionFinal();
        d.outcome = outcome;
        emit DecisionRecorded(hub, instanceId, applied, sig);
    }

    /// @notice Claims REVERT for every swap lock of `state` that is past its deadline and
    /// has no decision or claim yet. `state` must be signed by a party of the open channel
    /// (so the lock, its hub and its deadline are an enclave's word). Each claim becomes final
    /// `challengeWindow` after it unless the hub's CONFIRM certificate is recorded first.
    function claimRevert(ChannelState calldata state, bytes calldata sig) external {
        Channel storage ch = channels[state.channelId];
        _requireOpen(ch.status);
        if (state.token != ch.token) revert BadToken();
        address signer = _recover(_digest(state), sig);
        if (signer != ch.a && signer != ch.b) revert NotAParty();
        uint256 n = state.locks.length;
        if (n > MAX_LOCKS) revert TooManyLocks();
        uint64 finalAt = uint64(block.timestamp) + challengeWindow;
        bool claimed = false;
        for (uint256 i = 0; i < n; i++) {
            Lock calldata lock = state.locks[i];
            if (lock.kind != KIND_CROSS_CHAIN || block.timestamp < lock.deadline) continue;
            SwapDecision storage d = swapDecisions[lock.hub][lock.instanceId];
            if (d.outcome != 0 || d.revertFinalAt != 0) continue;
            d.revertFinalAt = finalAt;
            claimed = true;
            emit RevertClaimed(lock.hub, lock.instanceId, finalAt, state.channelId);
        }
        if (!claimed) revert NothingToClaim();
    }

    /// @notice The EIP-712 digest an enclave signs for `state` (for off-chain tooling).
    function stateDigest(ChannelState calldata state) external view returns (bytes32) {
        return _digest(state);
    }

    function domainSeparator() external view returns (bytes32) {
        return block.chainid == cachedChainId ? cachedDomainSeparator : _domainSeparator();
    }

    // ---------------------------------------------------------------- internals

    function _requireActiveEnclave(address enclave) internal view {
        bytes32 m = enclaveMeasurement[enclave];
        if (m == bytes32(0)) revert NotRegistered();
        if (!allowedMeasurement[m]) revert MeasurementNotAllowed();
    }

    /// A recorded decision, or REVERT once a claim outlived its challenge window; 0 if neither.
    function _swapOutcome(SwapDecision storage d) internal view returns (uint8) {
        uint8 outcome = d.outcome;
        if (outcome != 0) return outcome;
        uint64 finalAt = d.revertFinalAt;
        if (finalAt != 0 && block.timestamp >= finalAt) return OUTCOME_REVERT;
        return 0;
    }

    function _requireOpen(uint8 status) internal pure {
        if (status == STATUS_OPEN) return;
        if (status == 0) revert UnknownChannel();
        revert ChannelNotOpen();
    }

    /// Takes `amount` of `token` (zero: ether, which came with the call) from the sender.
    function _receive(address token, uint256 amount) internal {
        if (token == address(0)) {
            if (msg.value != amount) revert BadValue();
            return;
        }
        if (msg.value != 0) revert BadValue();
        if (token.code.length == 0) revert BadToken();
        uint256 before = _balanceOf(token);
        (bool ok, bytes memory ret) = token.call(abi.encodeWithSelector(0x23b872dd, msg.sender, address(this), amount));
        if (!ok || (ret.length != 0 && (ret.length != 32 || abi.decode(ret, (uint256)) != 1))) {
            revert TokenTransferFailed();
        }
        // Fee-on-transfer (or rebasing) tokens would leave channels owing more than they hold.
        if (_balanceOf(token) - before != amount) revert TokenAmountMismatch();
    }

    function _balanceOf(address token) internal view returns (uint256) {
        (bool ok, bytes memory ret) = token.staticcall(abi.encodeWithSelector(0x70a08231, address(this)));
        if (!ok || ret.length != 32) revert BadToken();
        return abi.decode(ret, (uint256));
    }

    /// `transfer(to, amount)` of `token`: true if it succeeded (returned true or nothing).
    function _tryTransfer(address token, address to, uint256 amount) internal returns (bool) {
        (bool ok, bytes memory ret) = token.call(abi.encodeWithSelector(0xa9059cbb, to, amount));
        return ok && (ret.length == 0 || (ret.length == 32 && abi.decode(ret, (uint256)) == 1));
    }

    /// Pays `amount` of `token` (zero: ether) to `to`. A token transfer that fails does not
    /// block the close: the amount is kept for `to` to withdraw.
    function _pay(address token, address to, uint256 amount) internal {
        if (amount == 0) return;
        if (token == address(0)) {
            (bool ok,) = to.call{value: amount}("");
            if (!ok) revert PayoutFailed();
        } else if (!_tryTransfer(token, to, amount)) {
            owed[to][token] += amount;
            emit PayoutDeferred(to, token, amount);
        }
    }

    function _domainSeparator() internal view returns (bytes32) {
        return keccak256(
            abi.encode(
                DOMAIN_TYPEHASH,
                keccak256("teepay PaymentChannels"),
                keccak256("1"),
                block.chainid,
                address(this)
            )
        );
    }

    function _digest(ChannelState calldata state) internal view returns (bytes32) {
        uint256 n = state.locks.length;
        bytes32[] memory lockHashes = new bytes32[](n);
        for (uint256 i = 0; i < n; i++) {
            Lock calldata l = state.locks[i];
            lockHashes[i] = keccak256(
                abi.encode(LOCK_TYPEHASH, l.instanceId, l.amount, l.aToB, l.phase, l.kind, l.hub, l.deadline)
            );
        }
        bytes32 structHash = keccak256(
            abi.encode(
                CHANNEL_STATE_TYPEHASH,
                state.channelId,
                state.token,
                state.version,
                state.depositA,
                state.depositB,
                state.balanceA,
                state.balanceB,
                keccak256(abi.encodePacked(lockHashes))
            )
        );
        bytes32 domain = block.chainid == cachedChainId ? cachedDomainSeparator : _domainSeparator();
        return keccak256(abi.encodePacked("\x19\x01", domain, structHash));
    }

    /// ecrecover of a 65-byte r||s||v signature; rejects malformed and malleable ones.
    function _recover(bytes32 digest, bytes calldata sig) internal pure returns (address signer) {
        if (sig.length != 65) revert BadSignature();
        bytes32 r = bytes32(sig[0:32]);
        bytes32 s = bytes32(sig[32:64]);
        uint8 v = uint8(sig[64]);
        if (v != 27 && v != 28) revert BadSignature();
        if (uint256(s) > HALF_ORDER) revert BadSignature();
        signer = ecrecover(digest, v, r, s);
        if (signer == address(0)) revert BadSignature();
    }
}
