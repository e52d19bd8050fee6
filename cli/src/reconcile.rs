//! `loyalty reconcile`: reads a platform's orders and refunds over its REST API and sends what
//! the engine never applied, as the events its webhooks would have produced (same ids), so a
//! webhook that arrives late, or a second run, changes nothing.
//!
//! Credentials come from the environment: `LOYALTY_WOOCOMMERCE_URL`, `LOYALTY_WOOCOMMERCE_KEY`
//! and `LOYALTY_WOOCOMMERCE_SECRET` (a REST API key, read access); `LOYALTY_SHOPIFY_URL`
//! (`https://{shop}.myshopify.com`) and `LOYALTY_SHOPIFY_TOKEN` (an Admin API access token with
//! `read_orders` and `read_all_orders`: without it Shopify leaves out orders older than 60 days).

use std::io::IsTerminal;
use std::process::ExitCode;

use chrono::{NaiveDate, NaiveTime, Utc};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use loyalty_core::platforms::{ApiCredentials, OrderApi};
use loyalty_core::services::reconcile::{ReconcileReport, Reconciled};
use loyalty_core::webhooks::Platform as WebhookPlatform;
use serde_json::json;

use crate::report::program_of;
use crate::stores::{runtime, StoreArgs};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Platform {
    Shopify,
    Woocommerce,
    Cafe24,
}

#[derive(Debug, Args)]
pub struct ReconcileArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The program (needed only when the store has several).
    #[arg(long)]
    program: Option<String>,
    #[arg(long, value_enum)]
    platform: Platform,
    /// Orders changed on or after this day (UTC).
    #[arg(long, value_parser = crate::date_arg)]
    since: NaiveDate,
    /// Orders changed before the end of this day (UTC); today when absent.
    #[arg(long, value_parser = crate::date_arg)]
    until: Option<NaiveDate>,
    /// Say what is missing, and send nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// Exit status: 0 when everything is applied or sent, 1 when some events were refused or could
/// not be looked at (failed: run it again), 2 when the platform or the store could not be read
/// (after a page the platform did not give, what was read before it is reported).
pub fn run(args: ReconcileArgs) -> Result<ExitCode, String> {
    runtime()?.block_on(reconcile(args))
}

async fn reconcile(args: ReconcileArgs) -> Result<ExitCode, String> {
    let until = args.until.unwrap_or_else(|| Utc::now().date_naive());
    if until < args.since {
        return Err(format!("--until {until} is before --since {}", args.since));
    }
    let platform = match args.platform {
        Platform::Woocommerce => WebhookPlatform::WooCommerce,
        Platform::Shopify => WebhookPlatform::Shopify,
        Platform::Cafe24 => WebhookPlatform::Cafe24,
    };
    // Cafe24 is refused by the API itself, with its reason, before any credential is read.
    let credentials = match platform {
        WebhookPlatform::WooCommerce | WebhookPlatform::Shopify => {
            ApiCredentials::from_env(platform)?
        }
        _ => ApiCredentials {
            url: String::new(),
            key: None,
            secret: None,
            token: None,
        },
    };
    let api = OrderApi::new(platform, &credentials)?;
    let services = args.store.open().await?.sending_services();
    let program = program_of(&services, args.program.as_deref()).await?;
    let bar = spinner();
    let ticker = bar.clone();
    let after = args.since.and_time(NaiveTime::MIN).and_utc();
    let before = (until + chrono::Duration::days(1))
        .and_time(NaiveTime::MIN)
        .and_utc();
    let report = services
        .reconcile_platform(&program, &api, after, before, args.dry_run, &move |n| {
            ticker.set_position(n)
        })
        .await
        .map_err(|e| e.to_string());
    bar.finish_and_clear();
    let report = report?;
    print(&args, &report)?;
    if let Some(unread) = &report.unread {
        eprintln!("reconcile stopped: {unread}; run it again for the rest of the window");
        return Ok(ExitCode::from(2));
    }
    Ok(if report.count("refused") + report.count("failed") > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn spinner() -> ProgressBar {
    let bar = ProgressBar::new_spinner().with_style(
        ProgressStyle::with_template("{spinner} reconcile: {pos} orders read ({per_sec})")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    if !std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar
}

fn print(args: &ReconcileArgs, report: &ReconcileReport) -> Result<(), String> {
    let results = &report.results;
    let orders = report.orders;
    let count = |status: &str| report.count(status);
    let not_present: Vec<&Reconciled> = results.iter().filter(|r| r.status != "present").collect();
    if args.json {
        let doc = json!({
            "dry_run": args.dry_run,
            "orders": orders,
            "events": results.len(),
            "present": count("present"),
            "missing": results.len() - count("present") - count("rejected"),
            "rejected": count("rejected"),
            "sent": count("sent"),
            "refused": count("refused"),
            "failed": count("failed"),
            "not_present": not_present,
            "unread": report.unread,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?
        );
        return Ok(());
    }
    for r in &not_present {
        println!(
            "{:<8} {} {} order {} member {}{}",
            r.status,
            r.event,
            r.kind,
            r.order_id,
            r.member.as_deref().unwrap_or("(its order's)"),
            r.reason
                .as_deref()
                .map(|w| format!(": {w}"))
                .unwrap_or_default()
        );
    }
    println!(
        "reconcile: orders={orders} events={} present={} rejected={} missing={} sent={} refused={} failed={}",
        results.len(),
        count("present"),
        count("rejected"),
        results.len() - count("present") - count("rejected"),
        count("sent"),
        count("refused"),
        count("failed")
    );
    Ok(())
}
