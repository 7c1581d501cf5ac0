//! `teepay group`: the operators' side of a hub group's membership (DESIGN §10). A group's
//! enclaves release a flush only once a majority of its *members* hold it; the members are
//! replica enclaves' member keys that the operators' governance key signed, so no replica's
//! host can make its own fork count. `key` makes a governance key, `show` lists what every
//! replica's enclave holds, `admit` signs every replica's member key into a new membership.

use crate::client::{call, hub, out, runtime};
use crate::config;
use anyhow::{Context, Result, bail};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use teepay_api::pb;
use teepay_coordinator::SignedMembership;
use teepay_types::{Address, SigningKey};

#[derive(clap::Args, Debug)]
pub struct GroupArgs {
    #[command(subcommand)]
    action: GroupAction,
}

#[derive(clap::Subcommand, Debug)]
enum GroupAction {
    /// Create a governance key in FILE (32 bytes of hex, readable by its owner only) and
    /// print its address: put it in every replica's hub.toml as `governance = "0x…"`.
    Key {
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Every replica's enclave: its member key, the membership it holds, its last entry.
    Show {
        /// The hub.toml of any replica (its `[[replicas]]` name every replica's API).
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Admit every replica that answers as a member: sign their member keys with the
    /// governance key and hand the list to the leader; returns once every answering
    /// replica's enclave holds it (committed).
    Admit {
        #[arg(long, short)]
        config: PathBuf,
        /// The governance key file (`teepay group key`).
        #[arg(long)]
        governance_key: PathBuf,
        /// Admit the replicas that answer even if some do not (a replica that is down keeps
        /// no membership until it is admitted again; a majority of members must be up).
        #[arg(long)]
        partial: bool,
        #[arg(long)]
        json: bool,
    },
}

pub fn run(args: &GroupArgs) -> Result<ExitCode> {
    match &args.action {
        GroupAction::Key { file, json } => new_key(file, *json),
        GroupAction::Show { config, json } => show(config, *json),
        GroupAction::Admit { config, governance_key, partial, json } => {
            admit(config, governance_key, *partial, *json)
        }
    }
}

fn new_key(file: &Path, json: bool) -> Result<ExitCode> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let key = SigningKey::from_entropy(teepay_link::os_entropy()?)?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)
        .with_context(|| format!("creating {} (an existing key is never overwritten)", file.display()))?;
    writeln!(f, "{}", teepay_types::ids::to_hex(&key.secret_bytes()))?;
    f.sync_all()?;
    out(json, json!({"address": key.address().to_string(), "file": file.display().to_string()}), || {
        format!("governance key {} written to {}", key.address(), file.display())
    });
    Ok(ExitCode::SUCCESS)
}

fn read_key(file: &Path) -> Result<SigningKey> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let bytes: [u8; 32] = teepay_types::ids::from_hex(text.trim())
        .with_context(|| format!("{}: expected 32 bytes of hex (`teepay group key`)", file.display()))?;
    Ok(SigningKey::from_entropy(bytes)?)
}

/// Every replica's API from a replica's config: (id, `http://…`).
fn apis(config: &Path) -> Result<Vec<(u64, String)>> {
    let cfg: config::HubConfig = config::load(config)?;
    if cfg.replicas.len() < 2 {
        bail!("{}: not a hub group (it lists fewer than two [[replicas]])", config.display());
    }
    cfg.replicas
        .iter()
        .map(|r| match r.api {
            Some(api) => Ok((r.id, format!("http://{api}"))),
            None => bail!("replica {} has no `api` in {}: it cannot be asked", r.id, config.display()),
        })
        .collect()
}

/// Each replica's group view, or why it did not answer (within a few seconds).
async fn views(apis: &[(u64, String)]) -> Vec<(u64, Result<pb::GroupInfo>)> {
    let mut out = Vec::new();
    for (id, api) in apis {
        let ask = async { call(hub(api).await?.group(pb::GroupRequest {}).await) };
        let view = match tokio::time::timeout(Duration::from_secs(3), ask).await {
            Ok(r) => r,
            Err(_) => Err(anyhow::anyhow!("no answer from {api} within 3 s")),
        };
        out.push((*id, view));
    }
    out
}

fn show(config: &Path, json: bool) -> Result<ExitCode> {
    let apis = apis(config)?;
    runtime()?.block_on(async {
        let views = views(&apis).await;
        let value = json!({"replicas": views.iter().map(|(id, v)| match v {
            Ok(g) => json!({"id": id, "hub": g.hub, "member": g.member, "governance": g.governance,
                "version": g.version, "members": g.members, "seq": g.seq}),
            Err(e) => json!({"id": id, "error": e.to_string()}),
        }).collect::<Vec<_>>()});
        out(json, value, || {
            views
                .iter()
                .map(|(id, v)| match v {
                    Ok(g) => {
                        let admitted = g.members.contains(&g.member);
                        format!(
                            "replica {id}: member {} ({}), membership v{} of {} member(s), entry {}",
                            if g.member.is_empty() { "none" } else { &g.member },
                            if admitted { "admitted" } else { "not admitted" },
                            g.version,
                            g.members.len(),
                            g.seq
                        )
                    }
                    Err(e) => format!("replica {id}: {e:#}"),
                })
                .collect::<Vec<_>>()
                .join("\n")
        });
        Ok(ExitCode::SUCCESS)
    })
}

fn admit(config: &Path, key_file: &Path, partial: bool, json: bool) -> Result<ExitCode> {
    let apis = apis(config)?;
    let key = read_key(key_file)?;
    runtime()?.block_on(async {
        let mut answered = Vec::new();
        for (id, view) in views(&apis).await {
            match view {
                Ok(g) => answered.push((id, g)),
                Err(e) if partial => eprintln!("replica {id} is left out: {e:#}"),
                Err(e) => bail!(
                    "replica {id} did not answer ({e:#}): start it (a replica without state is provisioned by a running one) or pass --partial"
                ),
            }
        }
        let Some((_, first)) = answered.first() else { bail!("no replica answered") };
        let hub_id = first.hub.clone();
        for (id, g) in &answered {
            if g.hub != hub_id {
                bail!("replica {id} has hub identity {}, not {hub_id}: not one group", g.hub);
            }
            if g.member.is_empty() || g.governance.is_empty() {
                bail!("replica {id}'s enclave is not in a governed group (hub.toml needs `governance` before the group's first start)");
            }
            if g.governance != key.address().to_string() {
                bail!("{} is not this group's governance key ({})", key.address(), g.governance);
            }
        }
        let hub_address = Address::from_hex(&hub_id).context("the replicas' hub identity")?;
        let members: Vec<Address> = answered
            .iter()
            .map(|(id, g)| Address::from_hex(&g.member).with_context(|| format!("replica {id}'s member key")))
            .collect::<Result<_>>()?;
        let version = answered.iter().map(|(_, g)| g.version).max().unwrap_or(0) + 1;
        let signed = SignedMembership::sign(&key, hub_address, version, members.clone());
        let update = pb::MembershipUpdate {
            version,
            members: members.iter().map(ToString::to_string).collect(),
            signature: teepay_types::ids::to_hex(&signed.signature.0),
        };
        // Only the leader takes it; a follower says it follows.
        let mut refusals = Vec::new();
        let mut accepted = false;
        for (id, api) in &apis {
            let sent = async { call(hub(api).await?.update_membership(update.clone()).await) };
            match tokio::time::timeout(Duration::from_secs(5), sent).await {
                Ok(Ok(_)) => {
                    accepted = true;
                    break;
                }
                Ok(Err(e)) => refusals.push(format!("replica {id}: {e:#}")),
                Err(_) => refusals.push(format!("replica {id}: no answer within 5 s")),
            }
        }
        if !accepted {
            bail!("no replica took the membership:\n  {}", refusals.join("\n  "));
        }
        // Committed once every replica that answered holds it in its enclave.
        let started = Instant::now();
        let asked: Vec<(u64, String)> =
            apis.iter().filter(|(id, _)| answered.iter().any(|(a, _)| a == id)).cloned().collect();
        loop {
            let behind: Vec<u64> = views(&asked)
                .await
                .iter()
                .filter(|(_, v)| v.as_ref().map_or(true, |g| g.version < version))
                .map(|(id, _)| *id)
                .collect();
            if behind.is_empty() {
                break;
            }
            if started.elapsed() > Duration::from_secs(15) {
                bail!("membership v{version} was taken by the leader but replicas {behind:?} do not hold it after 15 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let ids: Vec<u64> = answered.iter().map(|(id, _)| *id).collect();
        let value = json!({"version": version, "replicas": ids,
            "members": members.iter().map(ToString::to_string).collect::<Vec<_>>()});
        out(json, value, || {
            format!("membership v{version}: replicas {ids:?} admitted as members; every one of them holds it")
        });
        Ok(ExitCode::SUCCESS)
    })
}
