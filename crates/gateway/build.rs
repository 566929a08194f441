// sqlx's `migrate!` embeds the migration files at compile time; a new file
// in these directories must rebuild the crate (sqlx's documented advice).
fn main() {
    println!("cargo:rerun-if-changed=migrations");
    println!("cargo:rerun-if-changed=migrations_audit");
}
