#![allow(dead_code)] // each test crate uses a different part of the shared support code
pub mod manifests;
pub mod tools;
