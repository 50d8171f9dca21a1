//! edgevm-abi
