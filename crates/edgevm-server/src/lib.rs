//! edgevm-server
