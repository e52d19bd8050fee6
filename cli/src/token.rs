//! `loyalty token`: a signed development token, for curl and for the app in development.

use clap::Args;
use loyalty_core::api::auth::{claims, sign, ADMIN_SCOPE};

/// The variable that holds the HS256 secret shared by `serve` and `token`.
pub const SECRET_VAR: &str = "LOYALTY_JWT_SECRET";

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("who").required(true))]
pub struct TokenArgs {
    /// A member token whose subject is this member id (or app identity).
    #[arg(long, group = "who")]
    member: Option<String>,
    /// An admin token (scope loyalty/admin).
    #[arg(long, group = "who")]
    admin: bool,
    /// Limit the token to one program (a member token then reads and spends only that
    /// program's points, where two programs may know one member id as two people).
    #[arg(long)]
    program: Option<String>,
    /// The operator the admin token names (ledgers and approvals say who acted).
    #[arg(long, requires = "admin", default_value = "admin")]
    operator: String,
    /// Hours until the token expires.
    #[arg(long, default_value_t = 24)]
    hours: i64,
}

pub fn run(args: &TokenArgs) -> Result<(), String> {
    let secret = std::env::var(SECRET_VAR).map_err(|_| {
        format!("{SECRET_VAR} is not set: use the value that `loyalty serve` printed (export {SECRET_VAR}=...)")
    })?;
    if secret.is_empty() {
        return Err(format!("{SECRET_VAR} is empty"));
    }
    if args.hours <= 0 {
        return Err("--hours must be at least 1".into());
    }
    let claims = match (&args.member, args.admin) {
        (Some(member), _) => claims(member, &[], args.program.as_deref(), args.hours),
        (None, _) => claims(
            &args.operator,
            &[ADMIN_SCOPE],
            args.program.as_deref(),
            args.hours,
        ),
    };
    let token =
        sign(secret.as_bytes(), &claims).map_err(|e| format!("cannot sign the token: {e}"))?;
    println!("{token}");
    Ok(())
}
