//! The DDL and the README's queries also run on a current ClickHouse release (what the compose
//! file runs), through chdb, ClickHouse as a Python library (`cargo dev test` installs it).

use std::path::PathBuf;
use std::process::Command;

const CHECK: &str = r#"
import glob, re, sys, tempfile
from chdb import session
root = sys.argv[1]
db = session.Session(tempfile.mkdtemp(prefix="eye-chdb-"))
print("ClickHouse", db.query("SELECT version()", "TSVRaw"))
db.query("CREATE DATABASE IF NOT EXISTS eye")
db.query("USE eye")
for path in sorted(glob.glob(root + "/schemas/clickhouse/*.sql")):
    statement = open(path).read()
    db.query(statement)
    db.query(statement)  # applied at every start-up: must be idempotent
db.query("INSERT INTO eye.events (event_id, session_id, category, name, timestamp) VALUES "
         "('00000000-0000-0000-0000-000000000001', 'e2085be5-9137-4e4e-80b5-f1ffddc25423', "
         "'page interaction', 'pageview', '2021-01-01 09:15:27')")
assert str(db.query("SELECT count() FROM eye.events_by_session", "TSVRaw")).strip() == "1", "the view fills events_by_session"
readme = open(root + "/README.md").read()
queries = re.findall(r"```sql\n(.*?)```", readme, re.S)
assert queries, "the README has SQL blocks"
for query in queries:
    db.query(query)
print("checked", len(queries), "README queries")
"#;

#[test]
fn ddl_and_readme_queries_run_on_current_clickhouse() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let output = Command::new("python3")
        .args(["-c", CHECK])
        .arg(&root)
        .output()
        .expect("running python3 (install chdb with `cargo dev test`)");
    assert!(
        output.status.success(),
        "the DDL or a README query fails on current ClickHouse:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!("{}", String::from_utf8_lossy(&output.stdout));
}
