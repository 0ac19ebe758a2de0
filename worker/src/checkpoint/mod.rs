//! Checkpoints, savepoints and restores: the protocol that makes state and
//! output exactly-once, and everything it keeps in object storage.

pub mod compatibility;
pub mod coordinator;
pub mod evidence;
pub mod fence;
pub mod layout;
pub mod manifest;
pub mod restore;
pub mod retention;
pub mod savepoint;
pub mod storage;
#[cfg(test)]
mod tests;
pub mod transfer;
pub mod upload;
