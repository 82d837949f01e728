//! `geosnap`: parses the command line, calls one operation of `geosnap-ops`, prints the
//! result. Exit codes: 0 success, 1 error, 2 usage error.

mod cli;
mod output;
mod progress;

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use clap::{CommandFactory, Parser};
use geosnap_catalog::{Retention, SnapshotState};
use geosnap_ops::Geosnap;
use geosnap_ops::jobs::WorkerOptions;
use geosnap_ops::restore::RestoreOptions;
use geosnap_replication::gc::GcOptions;
use geosnap_replication::simulator::FaultMode;

use cli::{CatalogCmd, Cli, Command, InstanceCmd, RegionCmd, SnapshotCmd};
use output::{Out, duration, rate, size, table, time};
use progress::Terminal;

fn main() -> ExitCode {
    geosnap_engine::malloc::tune();
    let cli = Cli::parse();
    init_tracing(cli.verbose, cli.quiet);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            if is_broken_pipe(&e) {
                return ExitCode::SUCCESS;
            }
            eprintln!("geosnap: {}", one_sentence(&e));
            ExitCode::from(1)
        }
    }
}

/// The error chain in one line, without repeating a cause already in its parent's text.
fn one_sentence(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let s = cause.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
    }
    parts.join(": ")
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    })
}

fn init_tracing(verbose: u8, quiet: bool) {
    let default = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "error",
        (false, 1) => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .without_time()
        .try_init();
}

fn data_dir(cli: &Cli) -> Result<PathBuf> {
    match &cli.data_dir {
        Some(d) => Ok(d.clone()),
        None => dirs::data_dir()
            .map(|d| d.join("geosnap"))
            .ok_or_else(|| anyhow!("no data directory: pass --data-dir or set GEOSNAP_DIR")),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn run(cli: Cli) -> Result<ExitCode> {
    let out = Out::new(cli.json, cli.quiet);
    let ui = Terminal::new(cli.json, cli.quiet);
    if let Command::Completions { shell } = cli.command {
        clap_complete::generate(shell, &mut Cli::command(), "geosnap", &mut io::stdout());
        return Ok(ExitCode::SUCCESS);
    }
    if let Command::GenImage {
        path,
        size,
        profile,
        seed,
        rewrite,
    } = &cli.command
    {
        return gen_image(path, size, profile, *seed, *rewrite, &out);
    }
    if let Command::Demo { size } = &cli.command {
        return demo(&cli, size, &out, &ui);
    }
    if let Command::Bench {
        input,
        size,
        profile,
        chunker,
        level,
        compare_chunkers,
    } = &cli.command
    {
        return bench(
            input,
            size,
            profile,
            chunker.as_deref(),
            *level,
            *compare_chunkers,
            &out,
        );
    }
    let dir = data_dir(&cli)?;
    if let Command::Init = cli.command {
        let r = Geosnap::init(&dir)?;
        out.show(&r, || {
            let regions: Vec<String> = r
                .regions
                .iter()
                .map(|s| format!("{} ({})", s.name, s.country))
                .collect();
            format!(
                "initialised {}\nregions: {}\nconfiguration: {}\n",
                r.dir.display(),
                regions.join(", "),
                r.config.display()
            )
        })?;
        return Ok(ExitCode::SUCCESS);
    }
    let rt = runtime()?;
    let g = Geosnap::open(&dir, rt.handle().clone())?;
    match cli.command {
        Command::Init
        | Command::Completions { .. }
        | Command::Demo { .. }
        | Command::Bench { .. }
        | Command::GenImage { .. } => {
            unreachable!("handled above")
        }
        Command::Instance(cmd) => instance(&g, cmd, &out),
        Command::Snapshot(cmd) => snapshot(&g, cmd, &out, &ui),
        Command::Restore(a) => {
            let opts = RestoreOptions {
                region: a.region,
                strict: a.strict_region,
                force: a.force,
            };
            let t = Instant::now();
            let r = g.restore(&a.snap, &a.to, &opts, &ui)?;
            let secs = t.elapsed().as_secs_f64();
            out.show(&r, || {
                let mut s = format!(
                    "restored {} to {} from {} in {} ({}), every chunk verified\n",
                    size(r.stats.image_size),
                    a.to.display(),
                    r.region,
                    duration(secs),
                    rate(r.stats.image_size, secs)
                );
                if r.stats.zero_bytes > 0 {
                    s += &format!("{} left as holes\n", size(r.stats.zero_bytes));
                }
                if r.read_from.iter().any(|read| read.region != r.region) {
                    let parts: Vec<String> = r
                        .read_from
                        .iter()
                        .map(|read| format!("{} from {}", size(read.bytes), read.region))
                        .collect();
                    s += &format!("read {}\n", parts.join(", "));
                }
                if !r.repaired_chunks.is_empty() || r.repaired_manifest {
                    s += &format!(
                        "{} chunk(s){} were missing or corrupt in {} and were fetched from another region and repaired there\n",
                        r.repaired_chunks.len(),
                        if r.repaired_manifest { " and the manifest" } else { "" },
                        r.region
                    );
                }
                if !r.unrepaired_chunks.is_empty() {
                    s += &format!(
                        "{} chunk(s) came from another region but could not be written back to {}\n",
                        r.unrepaired_chunks.len(),
                        r.region
                    );
                }
                s
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Jobs => {
            let jobs = g.catalog().jobs()?;
            out.show(&jobs, || {
                let rows: Vec<Vec<String>> = jobs
                    .iter()
                    .map(|j| {
                        vec![
                            j.id.to_string(),
                            j.kind.to_string(),
                            out.state(&j.state.to_string()),
                            j.snapshot
                                .map(|s| s.to_hex()[..12].to_string())
                                .unwrap_or_default(),
                            if j.payload.is_empty() {
                                "-".into()
                            } else {
                                j.payload.clone()
                            },
                            j.attempts.to_string(),
                            time(Some(j.updated_at)),
                            j.error.clone().unwrap_or_default(),
                        ]
                    })
                    .collect();
                table(
                    &[
                        "ID", "KIND", "STATE", "SNAPSHOT", "TARGET", "ATTEMPTS", "UPDATED", "ERROR",
                    ],
                    &rows,
                )
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Worker { once } => {
            let opts = WorkerOptions {
                once,
                until_job: None,
                prune: true,
            };
            let r = g.work(&opts, &ui)?;
            let failed = r.jobs.iter().filter(|j| j.error.is_some()).count();
            out.show(&r, || {
                let mut s = String::new();
                for j in &r.jobs {
                    s += &format!(
                        "job {} {} {}{}\n",
                        j.id,
                        j.kind,
                        out.state(&j.state.to_string()),
                        j.error
                            .as_ref()
                            .map(|e| format!(": {e}"))
                            .unwrap_or_default()
                    );
                }
                for p in &r.pruned {
                    s += &format!("pruned {p}\n");
                }
                if s.is_empty() {
                    s = "no jobs to run\n".into();
                }
                s
            })?;
            Ok(if failed > 0 {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Prune { now, dry_run } => {
            let now = now
                .map(|t| geosnap_catalog::clock::parse_rfc3339(&t))
                .transpose()?;
            let r = g.prune(now, dry_run)?;
            out.show(&r, || {
                let verb = if dry_run { "would prune" } else { "pruned" };
                let mut s = String::new();
                for p in &r.pruned {
                    s += &format!(
                        "{verb} {} ({}), expired {}\n",
                        p.snapshot,
                        &p.id[..12],
                        time(p.expires_at)
                    );
                    if !p.unreachable.is_empty() {
                        s += &format!(
                            "  not yet removed from {} (unreachable); repair finishes it\n",
                            p.unreachable.join(", ")
                        );
                    }
                }
                if r.pruned.is_empty() {
                    s = format!("nothing expired at {}\n", time(Some(r.now)));
                }
                s
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Gc { grace, dry_run } => {
            let opts = GcOptions {
                grace: Duration::from_secs(grace),
                dry_run,
                ..Default::default()
            };
            let reports = g.gc(&opts)?;
            let failed = reports.iter().any(|r| r.is_err());
            let json: Vec<serde_json::Value> = reports
                .iter()
                .map(|r| match r {
                    Ok(r) => serde_json::to_value(r).unwrap_or_default(),
                    Err(e) => serde_json::json!({ "error": e }),
                })
                .collect();
            out.show(&json, || {
                let rows: Vec<Vec<String>> = reports
                    .iter()
                    .map(|r| match r {
                        Ok(r) => vec![
                            r.store.clone(),
                            r.manifests.to_string(),
                            r.chunks.to_string(),
                            r.deleted.to_string(),
                            size(r.deleted_bytes),
                            r.skipped.clone().unwrap_or_default(),
                        ],
                        Err(e) => vec![
                            "-".into(),
                            "-".into(),
                            "-".into(),
                            "-".into(),
                            "-".into(),
                            e.clone(),
                        ],
                    })
                    .collect();
                let verb = if dry_run { "WOULD DELETE" } else { "DELETED" };
                table(
                    &["STORE", "MANIFESTS", "CHUNKS", verb, "BYTES", "NOTE"],
                    &rows,
                )
            })?;
            Ok(if failed {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Verify {
            region,
            snapshot,
            repair,
        } => {
            let reports = g.verify(region.as_deref(), snapshot.as_deref(), repair)?;
            let clean = reports.iter().all(|r| r.is_clean());
            out.show(&reports, || {
                let mut s = String::new();
                for r in &reports {
                    if let Some(rep) = &r.repair {
                        for (id, c) in &rep.snapshots {
                            s += &format!(
                                "{}: copied snapshot {} ({} chunks)\n",
                                r.region,
                                &id[..12],
                                c.copied_chunks
                            );
                        }
                    }
                    for v in [&r.main, &r.volume] {
                        if snapshot.is_some() && v.manifests == 0 {
                            // The store that does not hold this kind of snapshot.
                            continue;
                        }
                        s += &format!(
                            "{}: {} manifests, {} chunks in {} packs ({}) checked; {} missing, {} corrupt, {} damaged packs, {} damaged index objects, {} corrupt manifests{}\n",
                            v.store,
                            v.manifests,
                            v.chunks_checked,
                            v.packs_checked,
                            size(v.bytes_checked),
                            v.missing_chunks.len(),
                            v.corrupt_chunks.len(),
                            v.corrupt_packs.len() + v.missing_packs.len(),
                            v.corrupt_indexes.len(),
                            v.corrupt_manifests.len(),
                            if repair { format!("; {} repaired, {} not repairable", v.repaired.len(), v.unrepaired.len()) } else { String::new() }
                        );
                        for c in v.missing_chunks.iter().take(5) {
                            s += &format!("  missing chunk {c}\n");
                        }
                        for c in v.corrupt_chunks.iter().take(5) {
                            s += &format!("  corrupt chunk {c}\n");
                        }
                    }
                }
                s
            })?;
            if !clean {
                eprintln!("geosnap: verify found damage that is not repaired");
                return Ok(ExitCode::from(1));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Region(cmd) => region(&g, cmd, &out),
        Command::Catalog(CatalogCmd::Rebuild { from }) => {
            let r = g.rebuild_catalog(&from)?;
            out.show(&r, || {
                let mut s = format!(
                    "rebuilt the catalog from {}: {} snapshot(s) recorded\n",
                    r.from,
                    r.snapshots.len()
                );
                for x in &r.snapshots {
                    s += &format!("  {x}\n");
                }
                for x in &r.skipped {
                    s += &format!("  skipped {x}\n");
                }
                s
            })?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn bench(
    input: &Option<PathBuf>,
    size: &str,
    profile: &str,
    chunker: Option<&str>,
    level: i32,
    compare_chunkers: bool,
    out: &Out,
) -> Result<ExitCode> {
    let bytes = geosnap_engine::chunker::parse_size(size)
        .filter(|n| *n >= 1 << 20)
        .ok_or_else(|| anyhow!("--size {size:?} is not a size of at least 1M"))?;
    let profile = profile.parse().map_err(|e: String| anyhow!(e))?;
    let chunker = match chunker {
        Some(c) => c.parse()?,
        None => Default::default(),
    };
    let scratch = tempfile::Builder::new()
        .prefix("geosnap-bench-")
        .tempdir()
        .context("cannot create a temporary directory")?;
    let opts = geosnap_ops::bench::BenchOptions {
        input: input.clone(),
        size: bytes,
        profile,
        chunker,
        level,
        compare_chunkers,
        scratch: scratch.path().to_path_buf(),
    };
    let rt = runtime()?;
    let r = geosnap_ops::bench::run(&opts, rt.handle())?;
    out.show(&r, || {
        let mut s = format!(
            "image {} ({}{}, data {}), {} cores, chunker {}, zstd level {}, SHA-256 on {}\n\nsingle-core stages:\n",
            r.image.path.display(),
            size_str(r.image.size),
            if r.image.generated { ", generated" } else { "" },
            size_str(r.image.data_bytes),
            r.cores,
            r.chunker,
            r.level,
            r.sha256
        );
        let rows: Vec<Vec<String>> = r
            .stages
            .iter()
            .map(|st| vec![st.name.clone(), format!("{:.0} MB/s", st.mb_per_s)])
            .collect();
        s += &table(&["STAGE", "RATE"], &rows);
        s += &format!(
            "\nthe {} cores hash and compress at once as fast as {:.2} of them alone\n\
             ceiling: {:.2} core-seconds per GiB of this image (read + zero check + SHA-256 + zstd + one pack copy per region) \
             -> {:.0} MB/s on {:.2} cores' worth\n",
            r.cores, r.parallel_cores, r.core_seconds_per_gib, r.ceiling_mb_per_s, r.parallel_cores
        );
        s += &format!(
            "snapshot into three in-memory regions: {} ({:.0} MB/s), {:.0} % of the ceiling\n",
            duration(r.snapshot.seconds),
            r.snapshot.mb_per_s,
            100.0 * r.snapshot.of_ceiling.unwrap_or(0.0)
        );
        s += &format!(
            "restore from one in-memory region to a file: {} ({:.0} MB/s)\n",
            duration(r.restore.seconds),
            r.restore.mb_per_s
        );
        if !r.chunkers.is_empty() {
            let rows: Vec<Vec<String>> = r
                .chunkers
                .iter()
                .map(|c| {
                    vec![
                        c.chunker.clone(),
                        c.chunks.to_string(),
                        c.unique.to_string(),
                        format!("{:.2}", c.dedup_ratio),
                        format!("{:.2}", c.zstd_ratio),
                        format!("{:.0}", c.mb_per_s),
                        c.histogram
                            .iter()
                            .map(|(b, n)| format!("<={}:{n}", size_str(*b)))
                            .collect::<Vec<_>>()
                            .join(" "),
                    ]
                })
                .collect();
            s += "\n";
            s += &table(
                &["CHUNKER", "CHUNKS", "UNIQUE", "DEDUP", "ZSTD", "MB/S", "SIZES"],
                &rows,
            );
        }
        s
    })?;
    Ok(ExitCode::SUCCESS)
}

fn gen_image(
    path: &std::path::Path,
    size: &str,
    profile: &str,
    seed: u64,
    rewrite: Option<f64>,
    out: &Out,
) -> Result<ExitCode> {
    use geosnap_engine::imagegen;
    if let Some(fraction) = rewrite {
        if !(0.0..=1.0).contains(&fraction) {
            return Err(anyhow!(
                "--rewrite {fraction} is not a fraction from 0 to 1"
            ));
        }
        let n = imagegen::scatter_writes(path, fraction, seed)
            .with_context(|| format!("cannot rewrite {}", path.display()))?;
        let value = serde_json::json!({ "path": path, "rewritten_blocks": n });
        out.show(&value, || {
            format!("rewrote {n} 4 KiB blocks of {}\n", path.display())
        })?;
        return Ok(ExitCode::SUCCESS);
    }
    let bytes = geosnap_engine::chunker::parse_size(size)
        .ok_or_else(|| anyhow!("--size {size:?} is not a size"))?;
    let profile: imagegen::Profile = profile.parse().map_err(|e: String| anyhow!(e))?;
    imagegen::generate(path, bytes, profile, seed)
        .with_context(|| format!("cannot write {}", path.display()))?;
    let value = serde_json::json!({ "path": path, "size": bytes });
    out.show(&value, || {
        format!("wrote {} ({})\n", path.display(), size_str(bytes))
    })?;
    Ok(ExitCode::SUCCESS)
}

fn size_str(n: u64) -> String {
    size(n)
}

fn demo(cli: &Cli, size: &str, out: &Out, ui: &Terminal) -> Result<ExitCode> {
    let disk_size = geosnap_engine::chunker::parse_size(size)
        .filter(|n| *n >= 16 << 20)
        .ok_or_else(|| anyhow!("--size {size:?} is not a size of at least 16M"))?;
    let dir = match &cli.data_dir {
        Some(d) => {
            if d.exists() && d.read_dir().map(|mut r| r.next().is_some()).unwrap_or(true) {
                return Err(anyhow!(
                    "{} is not empty; the demo needs a fresh data directory",
                    d.display()
                ));
            }
            d.clone()
        }
        None => tempfile::Builder::new()
            .prefix("geosnap-demo-")
            .tempdir()
            .context("cannot create a temporary directory")?
            .keep(),
    };
    let rt = runtime()?;
    let t = Instant::now();
    let opts = geosnap_ops::demo::DemoOptions {
        dir: dir.clone(),
        disk_size,
    };
    let report = geosnap_ops::demo::run(&opts, rt.handle().clone(), ui);
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            return Err(anyhow!(e).context(format!("demo stopped (data in {})", dir.display())));
        }
    };
    out.show(&report, || {
        format!(
            "\nevery check held in {}. The demo's data is in {}; explore it with\n  \
             export GEOSNAP_DIR={}\n  geosnap snapshot list\n  geosnap region list\n  \
             geosnap restore web-1/second --to /tmp/web-1.img --region de-1\n",
            duration(t.elapsed().as_secs_f64()),
            dir.display(),
            dir.display()
        )
    })?;
    Ok(ExitCode::SUCCESS)
}

fn instance(g: &Geosnap, cmd: InstanceCmd, out: &Out) -> Result<ExitCode> {
    match cmd {
        InstanceCmd::Create {
            name,
            image,
            region,
            volume_backed,
        } => {
            let i = g.create_instance(&name, &image, region.as_deref(), volume_backed)?;
            out.show(&i, || {
                format!(
                    "created instance {} ({}-backed, home region {}, image {})\n",
                    i.name, i.backing, i.home_region, i.image_path
                )
            })?;
        }
        InstanceCmd::List => {
            let list = g.instances()?;
            out.show(&list, || {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|i| {
                        vec![
                            i.name.clone(),
                            i.backing.to_string(),
                            i.home_region.clone(),
                            i.image_path.clone(),
                        ]
                    })
                    .collect();
                table(&["NAME", "BACKING", "REGION", "IMAGE"], &rows)
            })?;
        }
        InstanceCmd::Show { name } => {
            let i = g.instance(&name)?;
            let snaps = g.snapshots(Some(&name))?;
            let value = serde_json::json!({ "instance": i, "snapshots": snaps });
            out.show(&value, || {
                let mut s = format!(
                    "instance {}\n  backing      {}\n  home region  {}\n  image        {}\n  created      {}\n  snapshots    {}\n",
                    i.name,
                    i.backing,
                    i.home_region,
                    i.image_path,
                    time(Some(i.created_at)),
                    snaps.len()
                );
                for v in &snaps {
                    s += &format!(
                        "    {} {} {}\n",
                        &v.snapshot.id.to_hex()[..12],
                        v.snapshot.name,
                        out.state(&v.snapshot.state.to_string())
                    );
                }
                s
            })?;
        }
        InstanceCmd::Delete {
            name,
            with_snapshots,
        } => {
            let deleted = g.delete_instance(&name, with_snapshots)?;
            let value = serde_json::json!({ "instance": name, "deleted_snapshots": deleted });
            out.show(&value, || {
                format!(
                    "deleted instance {name}{}\n",
                    if deleted.is_empty() {
                        String::new()
                    } else {
                        format!(" and {} snapshot(s)", deleted.len())
                    }
                )
            })?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn snapshot(g: &Geosnap, cmd: SnapshotCmd, out: &Out, ui: &Terminal) -> Result<ExitCode> {
    match cmd {
        SnapshotCmd::Take {
            instance,
            name,
            retention_days,
            no_wait,
        } => {
            let retention = Retention::parse(&retention_days)?;
            let (snap, job) = g.queue_snapshot(&instance, &name, retention)?;
            if no_wait {
                let value = serde_json::json!({ "job": job.id, "snapshot": snap.id.to_hex() });
                out.show(&value, || {
                    format!(
                        "queued snapshot {}/{} ({}) as job {}; run `geosnap worker` to take it\n",
                        instance, name, snap.id, job.id
                    )
                })?;
                return Ok(ExitCode::SUCCESS);
            }
            let t = Instant::now();
            g.work(
                &WorkerOptions {
                    once: false,
                    until_job: Some(job.id),
                    prune: false,
                },
                ui,
            )?;
            let job = g.catalog().job(job.id)?;
            if let Some(e) = job
                .error
                .filter(|_| job.state == geosnap_catalog::JobState::Failed)
            {
                return Err(anyhow!("snapshot {instance}/{name} failed: {e}"));
            }
            // Finish the replication it still owes while we are here.
            let view = g.snapshot(&snap.id.to_hex())?;
            if view.snapshot.state == SnapshotState::Degraded {
                g.work(
                    &WorkerOptions {
                        once: true,
                        until_job: None,
                        prune: false,
                    },
                    ui,
                )?;
            }
            let view = g.snapshot(&snap.id.to_hex())?;
            let secs = t.elapsed().as_secs_f64();
            out.show(&view, || {
                let s = &view.snapshot;
                let image = s.image_size.unwrap_or(0);
                let data = s.data_bytes.unwrap_or(0);
                let stored = s.stored_bytes.unwrap_or(0);
                let mut text = format!(
                    "snapshot {}/{} ({}) {} in {} ({})\n",
                    s.instance,
                    s.name,
                    s.id,
                    out.state(&s.state.to_string()),
                    duration(secs),
                    rate(image, secs)
                );
                text += &format!(
                    "  image {}, data {} (the rest is zeros/holes), newly stored {}\n",
                    size(image),
                    size(data),
                    size(stored)
                );
                if let Some(from) = s.reused_from {
                    text += &format!(
                        "  image unchanged since snapshot {from} (same file, size and times; \
                         sampled chunks checked): its manifest was reused without a scan\n"
                    );
                }
                if let Some(at) = s.resumed_at {
                    text += &format!(
                        "  resumed at {} where an interrupted attempt had checkpointed its scan\n",
                        size(at)
                    );
                }
                text += &format!("  replicas: {}\n", replicas_line(&view.replicas, out));
                text += &format!(
                    "  retention: {}, expires {}\n",
                    s.retention,
                    time(s.expires_at)
                );
                text
            })?;
            Ok(ExitCode::SUCCESS)
        }
        SnapshotCmd::List { instance } => {
            let list = g.snapshots(instance.as_deref())?;
            out.show(&list, || {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|v| {
                        let s = &v.snapshot;
                        vec![
                            s.id.to_hex()[..12].to_string(),
                            s.instance.clone(),
                            s.name.clone(),
                            out.state(&s.state.to_string()),
                            s.image_size.map(size).unwrap_or_else(|| "-".into()),
                            s.stored_bytes.map(size).unwrap_or_else(|| "-".into()),
                            replicas_line(&v.replicas, out),
                            time(s.completed_at),
                            s.expires_at
                                .map(|t| time(Some(t)))
                                .unwrap_or_else(|| "never".into()),
                        ]
                    })
                    .collect();
                table(
                    &[
                        "ID",
                        "INSTANCE",
                        "NAME",
                        "STATE",
                        "SIZE",
                        "STORED",
                        "REPLICAS",
                        "COMPLETED",
                        "EXPIRES",
                    ],
                    &rows,
                )
            })?;
            Ok(ExitCode::SUCCESS)
        }
        SnapshotCmd::Show { snap } => {
            let v = g.snapshot(&snap)?;
            out.show(&v, || {
                let s = &v.snapshot;
                let mut t = format!(
                    "snapshot {}\n  instance     {}\n  name         {}\n  state        {}\n  backing      {} (home {})\n  created      {}\n  completed    {}\n  retention    {}\n  expires      {}\n",
                    s.id,
                    s.instance,
                    s.name,
                    out.state(&s.state.to_string()),
                    s.backing,
                    s.home_region,
                    time(Some(s.created_at)),
                    time(s.completed_at),
                    s.retention,
                    s.expires_at.map(|t| time(Some(t))).unwrap_or_else(|| "never".into()),
                );
                if let Some(n) = s.image_size {
                    t += &format!(
                        "  size         {} (data {}, newly stored {}, {} chunks)\n",
                        size(n),
                        size(s.data_bytes.unwrap_or(0)),
                        size(s.stored_bytes.unwrap_or(0)),
                        s.chunk_count.unwrap_or(0)
                    );
                }
                t += &format!("  replicas     {}\n", replicas_line(&v.replicas, out));
                if let Some(e) = &s.error {
                    t += &format!("  error        {e}\n");
                }
                t
            })?;
            Ok(ExitCode::SUCCESS)
        }
        SnapshotCmd::Delete { snap } => {
            let d = g.delete_snapshot(&snap)?;
            out.show(&d, || {
                let mut s = format!("deleted snapshot {} ({})\n", d.snapshot, d.id);
                if !d.unreachable.is_empty() {
                    s += &format!(
                        "  {} unreachable now; repair removes it there later\n",
                        d.unreachable.join(", ")
                    );
                }
                s
            })?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn replicas_line(replicas: &[geosnap_catalog::Replica], out: &Out) -> String {
    if replicas.is_empty() {
        return "-".into();
    }
    replicas
        .iter()
        .map(|r| format!("{}:{}", r.region, out.state(&r.state.to_string())))
        .collect::<Vec<_>>()
        .join(" ")
}

fn region(g: &Geosnap, cmd: RegionCmd, out: &Out) -> Result<ExitCode> {
    match cmd {
        RegionCmd::List => {
            let list = g.region_list()?;
            out.show(&list, || {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|r| {
                        let held = match (r.objects, r.bytes) {
                            (Some(o), Some(b)) => format!("{o} objects, {}", size(b)),
                            _ => "unreachable".into(),
                        };
                        let vol = match (r.volume_objects, r.volume_bytes) {
                            (Some(o), Some(b)) => format!("{o} objects, {}", size(b)),
                            _ => "unreachable".into(),
                        };
                        vec![
                            r.name.clone(),
                            r.country.clone(),
                            out.state(&r.simulated.to_string()),
                            held,
                            vol,
                            r.url.clone(),
                        ]
                    })
                    .collect();
                table(
                    &[
                        "REGION",
                        "COUNTRY",
                        "SIMULATED",
                        "HOLDS",
                        "VOLUME STORE",
                        "URL",
                    ],
                    &rows,
                )
            })?;
        }
        RegionCmd::Fail { region, mode } => {
            let mode: FaultMode = mode.parse().map_err(|e: String| anyhow!(e))?;
            let c = g.region_fail(&region, mode)?;
            out.show(&c, || format!("region {region} is now {c}\n"))?;
        }
        RegionCmd::Heal { region } => {
            let queued = g.region_heal(&region)?;
            let value = serde_json::json!({ "region": region, "replication_jobs_queued": queued });
            out.show(&value, || {
                format!(
                    "region {region} is healthy; {queued} replication job(s) queued (run `geosnap worker --once`)\n"
                )
            })?;
        }
    }
    let _ = io::stdout().flush();
    Ok(ExitCode::SUCCESS)
}
