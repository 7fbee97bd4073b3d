//! Cache tier of copilot-state: filled in by the cache issue (see DESIGN.md section 5).
