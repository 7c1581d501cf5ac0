// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

/// @title A plain ERC-20 for tests, the demo and local chains (`teepay deploy --token`).
/// @notice Anyone may mint on a local chain: it has no value. `mode` makes it misbehave the
/// ways real tokens do, so the tests can show how PaymentChannels handles each:
/// 0 standard; 1 returns nothing from transfer/transferFrom (USDT-style); 2 charges a 1% fee
/// on every transfer; 3 answers `false` to transfers while `refusing` is set.
contract TestToken {
    string public name;
    string public symbol;
    uint8 public immutable decimals;
    uint8 public immutable mode;
    bool public refusing;
    uint256 public totalSupply;
    mapping(address => uint256) public balanceOf;
    mapping(address => mapping(address => uint256)) public allowance;

    event Transfer(address indexed from, address indexed to, uint256 value);
    event Approval(address indexed owner, address indexed spender, uint256 value);

    constructor(string memory name_, string memory symbol_, uint8 decimals_, uint8 mode_) {
        name = name_;
        symbol = symbol_;
        decimals = decimals_;
        mode = mode_;
    }

    function mint(address to, uint256 amount) external {
        totalSupply += amount;
        balanceOf[to] += amount;
        emit Transfer(address(0), to, amount);
    }

    function setRefusing(bool refusing_) external {
        refusing = refusing_;
    }

    function approve(address spender, uint256 amount) external returns (bool) {
        allowance[msg.sender][spender] = amount;
        emit Approval(msg.sender, spender, amount);
        return true;
    }

    function transfer(address to, uint256 amount) external returns (bool) {
        return _answer(_move(msg.sender, to, amount));
    }

    function transferFrom(address from, address to, uint256 amount) external returns (bool) {
        if (mode == 3 && refusing) return _answer(false);
        uint256 allowed = allowance[from][msg.sender];
        require(allowed >= amount, "allowance");
        if (allowed != type(uint256).max) allowance[from][msg.sender] = allowed - amount;
        return _answer(_move(from, to, amount));
    }

    function _move(address from, address to, uint256 amount) internal returns (bool) {
        if (mode == 3 && refusing) return false;
        require(balanceOf[from] >= amount, "balance");
        uint256 fee = mode == 2 ? amount / 100 : 0;
        balanceOf[from] -= amount;
        balanceOf[to] += amount - fee;
        totalSupply -= fee;
        emit Transfer(from, to, amount - fee);
        return true;
    }

    /// Mode 1 returns no data at all, whatever the function declares.
    function _answer(bool ok) internal view returns (bool) {
        if (mode == 1) {
            assembly {
                return(0, 0)
            }
        }
        return ok;
    }
}
