//! The tools against a real broker and ClickHouse (started once for the whole binary).

mod load;
mod produce;
