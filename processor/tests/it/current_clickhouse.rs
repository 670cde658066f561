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
# One insert over more than 100 partitions is refused with code 252 (read as the sink reads codes);
# the sink inserts one month at a time, which passes.
months = [f"('00000000-0000-0000-0000-{i:012d}', 'e2085be5-9137-4e4e-80b5-f1ffddc25423', "
          f"'page interaction', 'pageview', '{2000 + i // 12}-{i % 12 + 1:02d}-15 12:00:00')" for i in range(101)]
insert = "INSERT INTO eye.events (event_id, session_id, category, name, timestamp) VALUES "
try:
    db.query(insert + ",".join(months))
    raise SystemExit("an insert over 101 months passed: the per-partition inserts are not needed")
except Exception as error:
    code = re.search(r"Code: (\d+)[.,]", str(error))
    assert code and code.group(1) == "252", f"expected code 252: {error}"
for month in months:
    db.query(insert + month)
assert str(db.query("SELECT count() FROM eye.events FINAL WHERE toYear(timestamp) < 2010", "TSVRaw")).strip() == "101"
print("101 months: one insert refused with code 252, one insert per month accepted")
# A failure retried with a new received_at (same month) is one row of event_errors FINAL.
for received_at in ["2021-01-03 10:00:01", "2021-01-03 10:01:30"]:
    db.query("INSERT INTO eye.event_errors (event_id, error_type, received_at) VALUES "
             f"('00000000-0000-0000-0000-00000000aaaa', 'invalid_data', '{received_at}')")
assert str(db.query("SELECT count() FROM eye.event_errors FINAL", "TSVRaw")).strip() == "1", "a retried failure is one row"
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
