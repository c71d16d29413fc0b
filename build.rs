// Rebuild when a migration is added or changed: `sqlx::migrate!` embeds them at compile time
// (SQLite's from migrations/, PostgreSQL's from migrations/postgres/).
fn main() {
    println!("cargo:rerun-if-changed=migrations");
    println!("cargo:rerun-if-changed=migrations/postgres");
}
