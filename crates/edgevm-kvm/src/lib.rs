//! edgevm-kvm
