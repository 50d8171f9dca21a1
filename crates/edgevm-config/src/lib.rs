//! edgevm-config: the JSON configuration of groups and programs (the glossary).
