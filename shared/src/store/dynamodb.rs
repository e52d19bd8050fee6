//! The DynamoDB adapter: the single-table layout of DESIGN §4.
//!
//! Every commit is one `TransactWriteItems`: the account conditioned on its version, each new
//! ledger entry and the event marker conditioned on `attribute_not_exists`. Cancellation reasons
//! are mapped to typed outcomes (duplicate, version conflict), and the SDK error is kept as the
//! source of anything else.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, ConditionCheck, Delete, GlobalSecondaryIndex,
    KeySchemaElement, KeyType, KeysAndAttributes, Projection, ProjectionType, Put, ReturnValue,
    ScalarAttributeType, StreamSpecification, StreamViewType, TransactWriteItem, Update,
};
use aws_sdk_dynamodb::Client;
use chrono::{DateTime, Duration, NaiveDate, SecondsFormat, Utc};

use super::{decode_cursor, encode_cursor, ledger_seq, seq_key};
use crate::domain::books::{BookRow, BooksAdd, BOOK_SHARDS};
use crate::domain::{Account, DueDates, DueJob, LedgerEntry, OrderRecord};
use crate::ports::{
    coupon_second, parse_rejected_cursor, HeadParts, Linked, OrderLinked, ProgramHead,
    RejectedPage, ORDER_LINK,
};
use crate::ports::{
    AliasStore, Assignment, AssignmentWrite, CampaignStore, Commit, CommitError, Consumed,
    Consumption, CounterAdd, Coupon, EventMarker, IdempotencyRecord, LedgerPage, MemberPage,
    MemberState, MemberStore, OutboxMessage, OutboxStore, ParkingStore, ProgramStore, Quota,
    Redemption, RedemptionStore, RejectStore, RejectedEvent, ReplayMark, ScheduleStore, StoreError,
    StoredProgram, COUNTER_SHARDS,
};
use crate::ports::{
    AuditRun, AuditStore, BooksStore, ErasureStore, Forgotten, MemberFile, MemberRecords,
    ParkedEvent, RecordsStore, Walked,
};
use crate::report::VariantCounts;

/// miniz's best compression: bodies are a few KB at most, so the time is a few microseconds.
const DEFLATE_LEVEL: u8 = 9;
/// No body inflates past this (an item is at most 400 KB; JSON deflates about 3 to 5 times), so
/// a corrupt or hostile binary body costs no more memory than this.
const MAX_BODY_BYTES: usize = 4 << 20;

/// Scan requests a page of members may take when they find none (each reads up to the page's
/// limit of items): an empty page with its cursor is answered after them.
const EMPTY_SCAN_PAGES: usize = 50;
/// Days of rejected-event partitions read by `rejected`.
const REJECTED_DAYS: i64 = 35;
/// Each due date is spread over this many index partitions, so no date is one hot key.
const DUE_SHARDS: u32 = 4;
/// The item that lists every program (DynamoDB cannot list partition keys without a scan).
const PROGRAMS_PK: &str = "PROGRAMS";
/// The sort-key prefix of outbox items (the stream relay's filter names it too).
pub const OUTBOX_PREFIX: &str = "OUTBOX#";

/// The sparse index of members due for a job: the attribute on the account item (present only
/// while something is due) and the GSI over it (keys only).
pub fn due_index(job: DueJob) -> (&'static str, &'static str) {
    match job {
        DueJob::Release => ("due_release", "due-release"),
        DueJob::Expire => ("due_expire", "due-expire"),
        DueJob::Review => ("due_review", "due-review"),
        DueJob::Notice => ("due_notice", "due-notice"),
        DueJob::Birthday => ("due_birthday", "due-birthday"),
        DueJob::Anniversary => ("due_anniversary", "due-anniversary"),
    }
}

/// The index partition of a member due on a date: `DUE#{program}#{date}#{shard}`.
pub fn due_partition(program: &str, date: chrono::NaiveDate, shard: u32) -> String {
    format!("DUE#{program}#{date}#{shard}")
}

/// The shard of a member's due-date index entries.
pub fn due_shard(member: &str) -> u32 {
    (crate::fingerprint::fnv1a64(member.bytes()) % u64::from(DUE_SHARDS)) as u32
}

/// The index attributes of an account item for its due dates.
fn due_attributes(program: &str, member: &str, due: &DueDates) -> Item {
    let shard = due_shard(member);
    DueJob::ALL
        .iter()
        .filter_map(|job| {
            let date = due.get(*job)?;
            Some((
                due_index(*job).0.to_string(),
                s(due_partition(program, date, shard)),
            ))
        })
        .collect()
}

type Item = HashMap<String, AttributeValue>;

/// The DynamoDB state adapter. The client is built once per container and shared.
#[derive(Clone)]
pub struct DynamoStore {
    client: Client,
    table: String,
    /// Parallel segments of a walk (the audit's scan).
    parts: u32,
    /// Read capacity consumed by walks, in thousandths of a unit.
    read_milli_units: Arc<AtomicU64>,
}

fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

fn n(value: impl ToString) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

fn member_pk(program: &str, member: &str) -> String {
    format!("P#{program}#M#{member}")
}

/// The partition key of an identity's (or an order's) link.
fn alias_pk(program: &str, kind: &str, value: &str) -> String {
    format!("P#{program}#ID#{kind}#{value}")
}

fn alias_key(program: &str, kind: &str, value: &str) -> Item {
    key(alias_pk(program, kind, value), "ALIAS")
}

fn key(pk: impl Into<String>, sk: impl Into<String>) -> Item {
    HashMap::from([("PK".to_string(), s(pk)), ("SK".to_string(), s(sk))])
}

/// The key of a stored item.
fn key_of(item: &Item) -> Option<Item> {
    Some(key(text(item, "PK")?, text(item, "SK")?))
}

fn text<'a>(item: &'a Item, name: &str) -> Option<&'a str> {
    item.get(name)
        .and_then(|v| v.as_s().ok())
        .map(String::as_str)
}

fn number(item: &Item, name: &str) -> Option<u64> {
    item.get(name)
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse().ok())
}

fn body<T: serde::de::DeserializeOwned>(item: &Item, what: &str) -> Result<T, StoreError> {
    serde_json::from_str(&body_json(item, what)?).map_err(|e| StoreError::Corrupt {
        key: what.to_string(),
        message: e.to_string(),
    })
}

/// The JSON of an item's `body`: a string as written, or a binary one inflated
/// ([`encode_deflated`]).
pub fn body_json<'a>(item: &'a Item, what: &str) -> Result<Cow<'a, str>, StoreError> {
    let corrupt = |message: String| StoreError::Corrupt {
        key: what.to_string(),
        message,
    };
    match item.get("body") {
        Some(AttributeValue::S(json)) => Ok(Cow::Borrowed(json.as_str())),
        Some(AttributeValue::B(deflated)) => {
            let json = miniz_oxide::inflate::decompress_to_vec_with_limit(
                deflated.as_ref(),
                MAX_BODY_BYTES,
            )
            .map_err(|e| corrupt(format!("cannot inflate the body: {:?}", e.status)))?;
            String::from_utf8(json)
                .map(Cow::Owned)
                .map_err(|e| corrupt(e.to_string()))
        }
        _ => Err(corrupt("no body attribute".into())),
    }
}

fn encode<T: serde::Serialize>(what: &str, value: &T) -> Result<AttributeValue, StoreError> {
    serde_json::to_string(value)
        .map(AttributeValue::S)
        .map_err(|e| StoreError::failed(format!("cannot encode {what}"), e))
}

/// The body of the items that grow with a member's history (the account, ledger entries,
/// order records): JSON deflated (raw DEFLATE, RFC 1951) into a binary attribute. A write costs
/// a unit per started KB of the item, two in a transaction; deflated, the account of a member
/// with a year of purchases stays under 1 KB (docs/decisions.md, "Bodies that grow are
/// stored deflated"). Bodies written as strings before are read as they are.
fn encode_deflated<T: serde::Serialize>(
    what: &str,
    value: &T,
) -> Result<AttributeValue, StoreError> {
    let json = serde_json::to_vec(value)
        .map_err(|e| StoreError::failed(format!("cannot encode {what}"), e))?;
    Ok(AttributeValue::B(Blob::new(
        miniz_oxide::deflate::compress_to_vec(&json, DEFLATE_LEVEL),
    )))
}

/// Throttling and network failures are worth retrying; anything else is not.
fn sdk_error<E, R>(what: &str, e: SdkError<E, R>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let transient = match &e {
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => true,
        SdkError::ServiceError(service) => matches!(
            service.err().code(),
            Some(
                "ThrottlingException"
                    | "ProvisionedThroughputExceededException"
                    | "RequestLimitExceeded"
                    | "InternalServerError"
                    | "TransactionInProgressException"
            )
        ),
        _ => false,
    };
    let message = format!("{what}: {}", crate::aws::cause(&e));
    if transient {
        StoreError::transient(message, e)
    } else {
        StoreError::failed(message, e)
    }
}

fn build<T>(
    what: &str,
    built: Result<T, aws_sdk_dynamodb::error::BuildError>,
) -> Result<T, StoreError> {
    built.map_err(|e| StoreError::failed(format!("cannot build {what}"), e))
}

impl DynamoStore {
    pub fn new(client: Client, table: impl Into<String>) -> DynamoStore {
        DynamoStore {
            client,
            table: table.into(),
            parts: 4,
            read_milli_units: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Splits walks into `parts` parallel scan segments (1 to 1,000,000).
    pub fn with_parts(mut self, parts: u32) -> DynamoStore {
        self.parts = parts.clamp(1, 1_000_000);
        self
    }

    fn count_read(&self, capacity: Option<&aws_sdk_dynamodb::types::ConsumedCapacity>) {
        if let Some(units) = capacity.and_then(|c| c.capacity_units()) {
            self.read_milli_units
                .fetch_add((units * 1000.0).round() as u64, Ordering::Relaxed);
        }
    }

    /// Creates the table (keys only, on demand) if it does not exist: for tests and local
    /// set-ups; in AWS the SAM template owns the table.
    pub async fn create_table(&self) -> Result<(), StoreError> {
        let attribute = |name: &str| {
            build(
                "attribute",
                AttributeDefinition::builder()
                    .attribute_name(name)
                    .attribute_type(ScalarAttributeType::S)
                    .build(),
            )
        };
        let key = |name: &str, kind| {
            build(
                "key",
                KeySchemaElement::builder()
                    .attribute_name(name)
                    .key_type(kind)
                    .build(),
            )
        };
        let mut request = self
            .client
            .create_table()
            .table_name(&self.table)
            .attribute_definitions(attribute("PK")?)
            .attribute_definitions(attribute("SK")?)
            .attribute_definitions(attribute("member")?)
            .key_schema(key("PK", KeyType::Hash)?)
            .key_schema(key("SK", KeyType::Range)?)
            .stream_specification(build(
                "stream",
                StreamSpecification::builder()
                    .stream_enabled(true)
                    .stream_view_type(StreamViewType::NewImage)
                    .build(),
            )?)
            .billing_mode(BillingMode::PayPerRequest);
        for job in DueJob::ALL {
            let (attribute_name, index) = due_index(job);
            request = request
                .attribute_definitions(attribute(attribute_name)?)
                .global_secondary_indexes(build(
                    "index",
                    GlobalSecondaryIndex::builder()
                        .index_name(index)
                        .key_schema(key(attribute_name, KeyType::Hash)?)
                        .key_schema(key("member", KeyType::Range)?)
                        .projection(
                            Projection::builder()
                                .projection_type(ProjectionType::KeysOnly)
                                .build(),
                        )
                        .build(),
                )?);
        }
        let result = request.send().await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("ResourceInUseException") => Ok(()),
            Err(e) => Err(sdk_error("cannot create the table", e)),
        }
    }

    async fn get(&self, key: Item) -> Result<Option<Item>, StoreError> {
        self.read(key, true).await
    }

    /// The member an identity is linked to, read strongly or (half the units) possibly a
    /// moment old.
    async fn alias_member(
        &self,
        program: &str,
        kind: &str,
        value: &str,
        consistent: bool,
    ) -> Result<Option<String>, StoreError> {
        let item = self
            .read(alias_key(program, kind, value), consistent)
            .await?;
        Ok(item.and_then(|i| text(&i, "member").map(str::to_string)))
    }

    /// A read that is strongly consistent or, at half the read units, possibly a moment old.
    async fn read(&self, key: Item, consistent: bool) -> Result<Option<Item>, StoreError> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key))
            .consistent_read(consistent)
            .send()
            .await
            .map_err(|e| sdk_error("cannot read an item", e))?;
        Ok(output.item)
    }

    fn put(
        &self,
        item: Item,
        condition: Option<&str>,
        values: Option<Item>,
    ) -> Result<TransactWriteItem, StoreError> {
        let put = build(
            "put",
            Put::builder()
                .table_name(&self.table)
                .set_item(Some(item))
                .set_condition_expression(condition.map(str::to_string))
                .set_expression_attribute_values(values)
                .build(),
        )?;
        Ok(TransactWriteItem::builder().put(put).build())
    }

    /// Writes an item whatever is there (records whose key already makes them unique).
    async fn put_plain(&self, item: Item, what: &str) -> Result<(), StoreError> {
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .map_err(|e| sdk_error(what, e))?;
        Ok(())
    }

    /// Reads items by key in one BatchGetItem, strongly consistent.
    async fn batch_get(&self, keys: Vec<Item>) -> Result<Vec<Item>, StoreError> {
        self.batch_read(keys, true, "cannot read the member").await
    }

    /// Reads up to 100 items by key in one BatchGetItem, retrying the keys DynamoDB leaves
    /// unprocessed after a pause that doubles (it leaves them when the table is short of
    /// capacity, so an immediate retry mostly meets the same); `consistent` false reads at half
    /// the read units, possibly a moment old.
    async fn batch_read(
        &self,
        keys: Vec<Item>,
        consistent: bool,
        what: &str,
    ) -> Result<Vec<Item>, StoreError> {
        let mut items = Vec::new();
        let mut pending = keys;
        let mut pause = UNPROCESSED_PAUSE;
        for attempt in 0..UNPROCESSED_ATTEMPTS {
            // Checked before each request, not after each answer: a read of no keys sends none.
            if pending.is_empty() {
                return Ok(items);
            }
            if attempt > 0 {
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
            let request = build(
                "batch get",
                KeysAndAttributes::builder()
                    .set_keys(Some(pending))
                    .consistent_read(consistent)
                    .build(),
            )?;
            let output = self
                .client
                .batch_get_item()
                .request_items(&self.table, request)
                .send()
                .await
                .map_err(|e| sdk_error(what, e))?;
            if let Some(mut found) = output.responses {
                items.extend(found.remove(&self.table).unwrap_or_default());
            }
            pending = output
                .unprocessed_keys
                .and_then(|mut u| u.remove(&self.table))
                .map(|k| k.keys)
                .unwrap_or_default();
        }
        // The last request's answer may have left nothing out.
        if pending.is_empty() {
            return Ok(items);
        }
        Err(StoreError::Transient {
            message: "DynamoDB kept leaving keys unprocessed".into(),
            source: None,
        })
    }

    /// One batch read: the marker's key rides along with the account's, unless the marker is
    /// on the order's record, which is read anyway (a read unit less for every purchase).
    async fn member_for_event(
        &self,
        program: &str,
        member: &str,
        marker: &EventMarker,
        order_keys: &[String],
        campaigns: &[String],
        consistent: bool,
    ) -> Result<MemberState, StoreError> {
        let pk = member_pk(program, member);
        let marker_key = marker_sk(marker);
        let own_item = Some(&marker_key).filter(|_| order_keys.is_empty());
        let keys = member_keys(&pk, own_item.map(String::as_str), order_keys, campaigns);
        let items = self
            .batch_read(keys, consistent, "cannot read the member")
            .await?;
        let seen = marked(&items, &marker_key);
        let mut state = member_state(&pk, items)?;
        state.seen = seen;
        Ok(state)
    }

    /// Why a commit transaction was cancelled. moto does not always report reasons; then the
    /// marker is looked up to tell a duplicate from a version conflict.
    async fn cancelled(
        &self,
        commit: &Commit,
        marker_index: Option<usize>,
        special: SpecialWrites,
        reasons: Vec<Option<String>>,
    ) -> CommitError {
        let failed = |i: usize| reasons.get(i).and_then(|r| r.as_deref());
        // A record written on condition of a revision read a moment ago fails alike whether it
        // holds the marker or changed since: the marker is looked up below.
        if let Some(i) = marker_index.filter(|_| !special.revisions) {
            if failed(i) == Some("ConditionalCheckFailed") {
                return CommitError::Duplicate;
            }
        }
        if let Some(i) = special.idempotency {
            if failed(i) == Some("ConditionalCheckFailed") {
                return CommitError::Duplicate;
            }
        }
        if let Some(i) = special.revoke {
            if failed(i) == Some("ConditionalCheckFailed") {
                return CommitError::CouponConsumed;
            }
        }
        if let Some(i) = special.quota {
            if failed(i) == Some("ConditionalCheckFailed") {
                return CommitError::OverQuota;
            }
        }
        if let Some((from, to)) = special.assignments {
            if (from..to).any(|i| failed(i) == Some("ConditionalCheckFailed")) {
                return CommitError::VersionConflict;
            }
        }
        if let Some(outcome) = not_a_conflict(&reasons) {
            return outcome;
        }
        if reasons.is_empty() {
            // moto gives no reasons: look at what could have failed.
            if let Some(outcome) = self.cancelled_without_reasons(commit).await {
                return outcome;
            }
        }
        if failed(0) == Some("ConditionalCheckFailed")
            || reasons.iter().flatten().any(|r| r == "TransactionConflict")
        {
            return CommitError::VersionConflict;
        }
        if !special.revisions
            && reasons
                .iter()
                .flatten()
                .any(|r| r == "ConditionalCheckFailed")
        {
            // A ledger entry id that exists already: the event had its effect.
            return CommitError::Duplicate;
        }
        if let Some(marker) = &commit.marker {
            let pk = member_pk(&commit.program, &commit.member);
            let mut keys = vec![key(&pk, marker_sk(marker))];
            keys.extend(
                commit
                    .marker_order
                    .iter()
                    .map(|o| key(&pk, format!("O#{o}"))),
            );
            return match self.batch_get(keys).await {
                Ok(items) if marked(&items, &marker_sk(marker)) => CommitError::Duplicate,
                Ok(_) => CommitError::VersionConflict,
                Err(e) => CommitError::Store(e),
            };
        }
        CommitError::VersionConflict
    }
}

impl DynamoStore {
    /// What a refused assignment found: the member's account being erased, or gone though
    /// read (`None`), else the assignment another request recorded first.
    async fn assignment_after_refusal(
        &self,
        pk: &str,
        assignment: &Assignment,
        account_seen: bool,
    ) -> Result<Option<(Assignment, bool)>, StoreError> {
        let assigned = format!("A#{}", assignment.campaign);
        let keys = vec![key(pk, "ACCOUNT"), key(pk, assigned.as_str())];
        let items = self
            .batch_read(keys, true, "cannot read the assignment")
            .await?;
        let of = |sk: &str| items.iter().find(|i| text(i, "SK") == Some(sk));
        match of("ACCOUNT") {
            Some(account) if account.contains_key(ERASING) => return Ok(None),
            None if account_seen => return Ok(None),
            _ => {}
        }
        let stored: Option<Assignment> = of(&assigned)
            .map(|item| body(item, "assignment"))
            .transpose()?;
        match stored {
            Some(s) if s.holds_for(&assignment.hash_seed, assignment.bucket_version) => {
                Ok(Some((s, false)))
            }
            _ => Err(StoreError::Transient {
                message: "the assignment was refused; try again".into(),
                source: None,
            }),
        }
    }

    /// Identities' links in their order, in batch reads of 100.
    async fn links(
        &self,
        program: &str,
        links: &[(&str, &str)],
        consistent: bool,
    ) -> Result<Vec<Linked>, StoreError> {
        let mut found: HashMap<String, Linked> = HashMap::new();
        for chunk in links.chunks(100) {
            let keys = chunk
                .iter()
                .map(|(kind, value)| alias_key(program, kind, value))
                .collect();
            for item in self
                .batch_read(keys, consistent, "cannot read the links")
                .await?
            {
                if let Some(pk) = text(&item, "PK") {
                    found.insert(pk.to_string(), linked(&item));
                }
            }
        }
        Ok(links
            .iter()
            .map(|(kind, value)| {
                found
                    .remove(&alias_pk(program, kind, value))
                    .unwrap_or_default()
            })
            .collect())
    }

    /// A commit's writes, but for its books: the account under its version, the entries (the
    /// first carrying the messages about the member), the marker, the order records, the
    /// redemption's items and the waiting messages. With the index of the write whose failed
    /// condition means a duplicate, and those of the other conditional writes.
    fn commit_writes(
        &self,
        commit: &Commit,
    ) -> Result<(Vec<TransactWriteItem>, Option<usize>, SpecialWrites), StoreError> {
        let pk = member_pk(&commit.program, &commit.member);
        let version = commit.expected_version.unwrap_or(0) + 1;
        let mut account = commit.account.clone();
        account.version = version;
        let mut account_item = key(&pk, "ACCOUNT");
        account_item.extend(due_attributes(&commit.program, &commit.member, &commit.due));
        account_item.insert("member".into(), s(&commit.member));
        account_item.insert("version".into(), n(version));
        if account.erased.is_some() {
            // For the conditions of writes that are not commits on the account (assignments).
            account_item.insert(ERASING.into(), AttributeValue::Bool(true));
        }
        if let Some(referrer) = &account.referred_by {
            // The body is deflated: an erasure of the referrer finds its referees by this.
            account_item.insert(REFERRER.into(), s(referrer));
        }
        account_item.insert("body".into(), encode_deflated("account", &account)?);
        let mut writes = vec![match commit.expected_version {
            None => self.put(account_item, Some("attribute_not_exists(PK)"), None)?,
            Some(v) => self.put(
                account_item,
                Some("version = :v"),
                Some(HashMap::from([(":v".to_string(), n(v))])),
            )?,
        }];
        let (carried, waiting) = carried_and_waiting(commit);
        for (i, entry) in commit.entries.iter().enumerate() {
            let mut item = key(&pk, format!("L#{}", seq_key(ledger_seq(version, i))));
            item.insert("entry_id".into(), s(&entry.id));
            item.insert("body".into(), encode_deflated("entry", entry)?);
            if i == 0 && !carried.is_empty() {
                item.insert(CARRIED.into(), encode("outbox message", &carried)?);
            }
            writes.push(self.put(item, Some("attribute_not_exists(PK)"), None)?);
        }
        // The marker rides on its order's record (a purchase, a refund): one item less. A
        // commit that names an order writes its record (`store::unfit` refuses it otherwise).
        let on_order = commit.marker_order.as_ref();
        let mut marker_index = None;
        if let (Some(marker), None) = (&commit.marker, on_order) {
            let mut item = key(&pk, marker_sk(marker));
            item.insert(
                "at".into(),
                s(Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)),
            );
            writes.push(self.put(item, Some("attribute_not_exists(PK)"), None)?);
            marker_index = Some(writes.len() - 1);
        }
        let mut revised = false;
        for (order_key, record) in &commit.orders {
            let marker = commit
                .marker
                .as_ref()
                .filter(|_| on_order == Some(order_key));
            let read = commit.order_revisions.get(order_key).copied();
            writes.push(self.order_write(&pk, order_key, record, marker, (read, version))?);
            revised |= read.is_some();
            if marker.is_some() {
                marker_index = Some(writes.len() - 1);
            }
        }
        let mut special = self.redemption_writes(commit, &mut writes)?;
        special.revisions = revised;
        // Last, so that the indexes of the cancellation reasons above are unchanged.
        for message in waiting {
            writes.push(self.put(outbox_item(message)?, None, None)?);
        }
        Ok((writes, marker_index, special))
    }
}

#[async_trait]
impl CampaignStore for DynamoStore {
    async fn campaigns(&self, program: &str) -> Result<Vec<(String, String)>, StoreError> {
        let mut campaigns = Vec::new();
        let mut start = None;
        loop {
            let output = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("PK = :pk AND begins_with(SK, :c)")
                .expression_attribute_values(":pk", s(format!("P#{program}")))
                .expression_attribute_values(":c", s("C#"))
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| sdk_error("cannot list campaigns", e))?;
            campaigns.extend(output.items().iter().filter_map(|i| {
                let id = text(i, "SK")?.strip_prefix("C#")?;
                Some((id.to_string(), text(i, "body")?.to_string()))
            }));
            match output.last_evaluated_key {
                Some(last) => start = Some(last),
                None => return Ok(campaigns),
            }
        }
    }

    async fn record_assignment(
        &self,
        program: &str,
        member: &str,
        assignment: &Assignment,
        account_seen: bool,
        message: Option<&OutboxMessage>,
    ) -> Result<Option<(Assignment, bool)>, StoreError> {
        let pk = member_pk(program, member);
        let put = self.put(
            assignment_item(&pk, assignment)?,
            Some("attribute_not_exists(PK) OR hash_seed <> :seed OR bucket_version < :bv"),
            Some(HashMap::from([
                (":seed".to_string(), s(&assignment.hash_seed)),
                (":bv".to_string(), n(assignment.bucket_version)),
            ])),
        )?;
        let count = self.counter_write(program, &CounterAdd::assigned(member, assignment))?;
        // The account as the caller read it, not being erased: an assignment is not a commit
        // on the account, and an erasure's deletes must not be outlived by one.
        let account = build(
            "condition check",
            ConditionCheck::builder()
                .table_name(&self.table)
                .set_key(Some(key(&pk, "ACCOUNT")))
                .condition_expression(if account_seen {
                    "attribute_exists(PK) AND attribute_not_exists(#erasing)"
                } else {
                    "attribute_not_exists(#erasing)"
                })
                .expression_attribute_names("#erasing", ERASING)
                .build(),
        )?;
        let mut writes = vec![
            put,
            count,
            TransactWriteItem::builder()
                .condition_check(account)
                .build(),
        ];
        if let Some(message) = message {
            writes.push(self.put(outbox_item(message)?, None, None)?);
        }
        for attempt in 1..=ASSIGNMENT_ATTEMPTS {
            let Err(reasons) = self.transact(writes.clone()).await? else {
                return Ok(Some((assignment.clone(), true)));
            };
            let code = |i: usize| reasons.get(i).and_then(|r| r.as_deref());
            if code(2) == Some("ConditionalCheckFailed") {
                return Ok(None);
            }
            // A commit on the account (a purchase) was in flight: try again.
            if reasons.iter().flatten().any(|r| r == "TransactionConflict") {
                if attempt < ASSIGNMENT_ATTEMPTS {
                    tokio::time::sleep(std::time::Duration::from_millis(20 * attempt)).await;
                }
                continue;
            }
            // Recorded by another request first (that one stands), or no reasons given.
            return self
                .assignment_after_refusal(&pk, assignment, account_seen)
                .await;
        }
        Err(StoreError::Transient {
            message: "the member's account was busy; the assignment was not recorded".into(),
            source: None,
        })
    }

    async fn campaign_counts(
        &self,
        program: &str,
        campaign: &str,
    ) -> Result<Vec<VariantCounts>, StoreError> {
        let mut summed: Vec<VariantCounts> = Vec::new();
        for shard in 0..COUNTER_SHARDS {
            let output = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("PK = :pk AND begins_with(SK, :v)")
                .expression_attribute_values(":pk", s(counter_pk(program, campaign, shard)))
                .expression_attribute_values(":v", s("V#"))
                .consistent_read(true)
                .send()
                .await
                .map_err(|e| sdk_error("cannot read the counters", e))?;
            for item in output.items() {
                let sk = text(item, "SK").unwrap_or_default();
                let Some(variant) = sk.strip_prefix("V#") else {
                    continue;
                };
                let whole = |name: &str| {
                    item.get(name)
                        .and_then(|v| v.as_n().ok())
                        .and_then(|v| v.parse::<i64>().ok())
                        .unwrap_or(0)
                };
                let counts = VariantCounts {
                    variant: variant.to_string(),
                    assigned: whole("assigned"),
                    converters: whole("converters"),
                    purchases: whole("purchases"),
                    revenue: whole("revenue"),
                    revenue_sq: wide_number(item, "revenue_sq").ok_or_else(|| {
                        StoreError::Corrupt {
                            key: sk.to_string(),
                            message: "revenue_sq is not an integer".into(),
                        }
                    })?,
                    points: whole("points"),
                };
                match summed.iter_mut().find(|c| c.variant == counts.variant) {
                    Some(total) => total.add(&counts),
                    None => summed.push(counts),
                }
            }
        }
        summed.sort_by(|a, b| a.variant.cmp(&b.variant));
        Ok(summed)
    }

    async fn campaign(&self, program: &str, id: &str) -> Result<Option<(u32, String)>, StoreError> {
        let item = self
            .get(key(format!("P#{program}"), format!("C#{id}")))
            .await?;
        Ok(item.and_then(|i| {
            let version = u32::try_from(number(&i, "version")?).ok()?;
            Some((version, text(&i, "body")?.to_string()))
        }))
    }

    async fn put_campaign(
        &self,
        program: &str,
        id: &str,
        json: &str,
        expected: Option<u32>,
    ) -> Result<Option<u32>, StoreError> {
        let version = expected.unwrap_or(0) + 1;
        let mut item = key(format!("P#{program}"), format!("C#{id}"));
        item.insert("version".into(), n(version));
        item.insert("body".into(), s(json));
        let request = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item));
        let request = match expected {
            None => request.condition_expression("attribute_not_exists(PK)"),
            Some(v) => request
                .condition_expression("version = :expected")
                .expression_attribute_values(":expected", n(v)),
        };
        let written = put_written(request.send().await, "cannot save the campaign")?;
        Ok(written.then_some(version))
    }
}

/// The reasons of a cancelled transaction, item by item.
fn cancellation_codes(
    cancelled: &aws_sdk_dynamodb::types::error::TransactionCanceledException,
) -> Vec<Option<&str>> {
    cancelled
        .cancellation_reasons()
        .iter()
        .map(|r| r.code())
        .collect()
}

/// Whether a cancelled transaction's first item failed its condition (moto names no reason:
/// its cancellations are conditions').
fn first_condition_failed(codes: &[Option<&str>]) -> bool {
    codes
        .first()
        .is_none_or(|c| c.is_none_or(|c| c == "ConditionalCheckFailed"))
}

/// A cancellation that no reload and retry of the commit would cure: the table throttled it
/// (transient: the message or request comes back later), or an item broke one of DynamoDB's
/// rules (it never commits; it fails instead of being retried as a conflict until it gives up).
fn not_a_conflict(reasons: &[Option<String>]) -> Option<CommitError> {
    let reason = |codes: &[&str]| {
        reasons
            .iter()
            .flatten()
            .find(|r| codes.contains(&r.as_str()))
            .cloned()
    };
    if let Some(code) = reason(&[
        "ThrottlingError",
        "ProvisionedThroughputExceeded",
        "RequestLimitExceeded",
    ]) {
        return Some(CommitError::Store(StoreError::Transient {
            message: format!("the commit was throttled ({code}); try again later"),
            source: None,
        }));
    }
    // DynamoDB names an item too large `ValidationError`; moto, `ItemSizeTooLarge`.
    reason(&[
        "ValidationError",
        "ItemCollectionSizeLimitExceeded",
        "ItemSizeTooLarge",
    ])
    .map(|code| {
        CommitError::Store(StoreError::Unfit {
            message: format!("the commit was refused by the table ({code})"),
        })
    })
}

/// Where the redemption items of a commit sit in its transaction.
#[derive(Debug, Clone, Copy, Default)]
struct SpecialWrites {
    /// An order record is written on condition of the revision read: a failed condition there
    /// is a stale read or a duplicate, told apart by reading again.
    revisions: bool,
    idempotency: Option<usize>,
    revoke: Option<usize>,
    quota: Option<usize>,
    /// Assignment writes: a failed condition there means the member changed meanwhile.
    assignments: Option<(usize, usize)>,
}

fn books_pk(program: &str, shard: u32) -> String {
    format!("P#{program}#BOOKS#S#{shard}")
}

#[async_trait]
impl BooksStore for DynamoStore {
    async fn book_rows(&self, program: &str, until: NaiveDate) -> Result<Vec<BookRow>, StoreError> {
        let mut summed: BTreeMap<(NaiveDate, String), i64> = BTreeMap::new();
        for shard in 0..BOOK_SHARDS {
            let mut start = None;
            loop {
                let output = self
                    .client
                    .query()
                    .table_name(&self.table)
                    .key_condition_expression("PK = :pk AND SK BETWEEN :lo AND :hi")
                    .expression_attribute_values(":pk", s(books_pk(program, shard)))
                    .expression_attribute_values(":lo", s("D#"))
                    .expression_attribute_values(":hi", s(format!("D#{until}")))
                    .set_exclusive_start_key(start)
                    .consistent_read(true)
                    .send()
                    .await
                    .map_err(|e| sdk_error("cannot read the books", e))?;
                for item in output.items() {
                    let sk = text(item, "SK").unwrap_or_default();
                    let day = sk
                        .strip_prefix("D#")
                        .and_then(|d| d.parse::<NaiveDate>().ok())
                        .ok_or_else(|| StoreError::Corrupt {
                            key: sk.to_string(),
                            message: "not a day of the books".into(),
                        })?;
                    for (name, value) in item.iter().filter(|(k, _)| *k != "PK" && *k != "SK") {
                        let value = value
                            .as_n()
                            .ok()
                            .and_then(|v| v.parse::<i64>().ok())
                            .ok_or_else(|| StoreError::Corrupt {
                                key: format!("{sk} {name}"),
                                message: "a counter that is not an integer".into(),
                            })?;
                        *summed.entry((day, name.clone())).or_insert(0) += value;
                    }
                }
                start = output.last_evaluated_key;
                if start.is_none() {
                    break;
                }
            }
        }
        Ok(summed
            .into_iter()
            .map(|((day, name), value)| BookRow { day, name, value })
            .collect())
    }

    async fn book_counter(
        &self,
        program: &str,
        day: NaiveDate,
        name: &str,
    ) -> Result<i64, StoreError> {
        let keys = (0..BOOK_SHARDS)
            .map(|shard| key(books_pk(program, shard), format!("D#{day}")))
            .collect();
        Ok(self
            .batch_get(keys)
            .await?
            .iter()
            .filter_map(|item| item.get(name)?.as_n().ok()?.parse::<i64>().ok())
            .sum())
    }
}

fn counter_pk(program: &str, campaign: &str, shard: u32) -> String {
    format!("P#{program}#C#{campaign}#S#{shard}")
}

fn counter_key(program: &str, campaign: &str, shard: u32, variant: &str) -> Item {
    key(counter_pk(program, campaign, shard), format!("V#{variant}"))
}

/// An assignment item, with the attributes its conditions compare.
fn assignment_item(pk: &str, assignment: &Assignment) -> Result<Item, StoreError> {
    let mut item = key(pk, format!("A#{}", assignment.campaign));
    item.insert("body".into(), encode("assignment", assignment)?);
    item.insert("hash_seed".into(), s(&assignment.hash_seed));
    item.insert("bucket_version".into(), n(assignment.bucket_version));
    item.insert("purchases".into(), n(assignment.purchases));
    Ok(item)
}

/// A number attribute too wide for i64 (sums of squares).
fn wide_number(item: &Item, name: &str) -> Option<i128> {
    match item.get(name) {
        None => Some(0),
        Some(AttributeValue::N(v)) => v.parse().ok(),
        Some(_) => None,
    }
}

fn quota_key(program: &str, quota: &Quota) -> Item {
    key(
        format!("P#{program}#QUOTA#{}", quota.name),
        format!("D#{}", quota.day),
    )
}

fn coupon_key(program: &str, code: &str) -> Item {
    key(format!("P#{program}#COUPON#{code}"), "COUPON")
}

/// The account's attribute that says its erasure has begun (the mark itself is in the body).
const ERASING: &str = "erasing";

/// Tries of an assignment whose transaction met a commit on the member's account.
const ASSIGNMENT_ATTEMPTS: u64 = 4;

/// The sort key of an idempotency record (alone under its partition key).
const IDEMPOTENCY_SK: &str = "IDEMP";

fn idempotency_key(program: &str, principal: &str, request_key: &str) -> Item {
    key(
        format!("{}{request_key}", idempotency_prefix(program, principal)),
        IDEMPOTENCY_SK,
    )
}

/// The start of the partition keys of one caller's idempotency records.
fn idempotency_prefix(program: &str, principal: &str) -> String {
    format!("P#{program}#K#{principal}#")
}

fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A coupon from its item: the fixed part is the body; what changes (consumed, revoked) are
/// attributes, so that conditions can test them.
fn coupon_of(item: &Item) -> Result<Coupon, StoreError> {
    let mut coupon: Coupon = body(item, "coupon")?;
    if let (Some(order_ref), Some(at)) = (text(item, "consumed_ref"), text(item, "consumed_at")) {
        let at = DateTime::parse_from_rfc3339(at)
            .map_err(|e| StoreError::Corrupt {
                key: "coupon".into(),
                message: e.to_string(),
            })?
            .with_timezone(&Utc);
        coupon.consumed = Some(Consumed {
            order_ref: order_ref.to_string(),
            at,
        });
    }
    coupon.revoked = item.contains_key("revoked");
    Ok(coupon)
}

impl DynamoStore {
    /// Adds the redemption, the new coupon, the coupon to revoke and the idempotency record of
    /// a commit to its transaction.
    fn redemption_writes(
        &self,
        commit: &Commit,
        writes: &mut Vec<TransactWriteItem>,
    ) -> Result<SpecialWrites, StoreError> {
        let mut special = SpecialWrites::default();
        let pk = member_pk(&commit.program, &commit.member);
        for redemption in commit.redemption.iter().chain(&commit.copied_redemptions) {
            let mut item = key(&pk, format!("R#{}", redemption.id));
            item.insert("body".into(), encode("redemption", redemption)?);
            writes.push(self.put(item, None, None)?);
        }
        if let Some(coupon) = &commit.coupon {
            let mut item = coupon_key(&commit.program, &coupon.code);
            item.insert("body".into(), encode("coupon", coupon)?);
            item.insert("valid_until".into(), s(timestamp(coupon.expires_at)));
            writes.push(self.put(item, Some("attribute_not_exists(PK)"), None)?);
        }
        if let Some(code) = &commit.revoke_coupon {
            let update = build(
                "update",
                Update::builder()
                    .table_name(&self.table)
                    .set_key(Some(coupon_key(&commit.program, code)))
                    .update_expression("SET revoked = :yes")
                    .condition_expression("attribute_not_exists(consumed_ref)")
                    .expression_attribute_values(":yes", AttributeValue::Bool(true))
                    .build(),
            )?;
            writes.push(TransactWriteItem::builder().update(update).build());
            special.revoke = Some(writes.len() - 1);
        }
        if let Some(quota) = &commit.quota {
            writes.push(self.quota_write(&commit.program, quota)?);
            special.quota = Some(writes.len() - 1);
        }
        if let Some(record) = &commit.idempotency {
            let mut item = idempotency_key(&commit.program, &record.principal, &record.key);
            item.insert("body".into(), encode("idempotency record", record)?);
            // The table's TTL attribute: the record goes once the key can no longer be replayed.
            item.insert("expires_at".into(), n(record.expires_at.timestamp()));
            // An expired record that TTL has not deleted yet frees its key, as on every store.
            writes.push(self.put(
                item,
                Some("attribute_not_exists(PK) OR expires_at < :now"),
                Some(HashMap::from([(
                    ":now".to_string(),
                    n(Utc::now().timestamp()),
                )])),
            )?);
            special.idempotency = Some(writes.len() - 1);
        }
        let first = writes.len();
        // The commit's account version is each assignment's revision, as for order records.
        let version = commit.expected_version.unwrap_or(0) + 1;
        for write in &commit.assignments {
            writes.push(self.assignment_write(&pk, write, version)?);
        }
        if !commit.assignments.is_empty() {
            special.assignments = Some((first, writes.len()));
        }
        Ok(special)
    }

    /// An assignment put, with `revision` (the commit's account version), on condition that the
    /// stored one is still the one expected and, given the revision read, still has it.
    fn assignment_write(
        &self,
        pk: &str,
        write: &AssignmentWrite,
        revision: u64,
    ) -> Result<TransactWriteItem, StoreError> {
        let mut item = assignment_item(pk, &write.assignment)?;
        item.insert(REVISION.into(), n(revision));
        let Some(e) = &write.expected else {
            return self.put(item, Some("attribute_not_exists(PK)"), None);
        };
        let mut condition =
            "hash_seed = :seed AND bucket_version = :bv AND purchases = :n".to_string();
        let mut values = HashMap::from([
            (":seed".to_string(), s(&e.hash_seed)),
            (":bv".to_string(), n(e.bucket_version)),
            (":n".to_string(), n(e.purchases)),
        ]);
        match write.read_revision {
            None => {}
            // Recorded by campaign-assign and not counted in since: no revision yet.
            Some(0) => condition.push_str(" AND attribute_not_exists(rev)"),
            Some(read) => {
                condition.push_str(" AND rev = :read");
                values.insert(":read".to_string(), n(read));
            }
        }
        self.put(item, Some(&condition), Some(values))
    }

    /// Adds to a quota's total of the day on condition that it stays within the limit; the
    /// table's TTL removes the item two days after its day.
    fn quota_write(&self, program: &str, quota: &Quota) -> Result<TransactWriteItem, StoreError> {
        let expires = quota
            .day
            .and_hms_opt(0, 0, 0)
            .map_or(0, |at| at.and_utc().timestamp() + 2 * 86_400);
        let update = build(
            "update",
            Update::builder()
                .table_name(&self.table)
                .set_key(Some(quota_key(program, quota)))
                .update_expression("ADD used :add SET expires_at = :expires")
                .condition_expression("attribute_not_exists(used) OR used <= :room")
                .expression_attribute_values(":add", n(quota.add))
                .expression_attribute_values(":room", n(quota.room()))
                .expression_attribute_values(":expires", n(expires))
                .build(),
        )?;
        Ok(TransactWriteItem::builder().update(update).build())
    }

    /// Adds to one shard of a variant's counters (`ADD` creates the item the first time).
    fn counter_write(
        &self,
        program: &str,
        add: &CounterAdd,
    ) -> Result<TransactWriteItem, StoreError> {
        let c = &add.counts;
        let update = build(
            "update",
            Update::builder()
                .table_name(&self.table)
                .set_key(Some(counter_key(program, &add.campaign, add.shard, &c.variant)))
                .update_expression(
                    "ADD assigned :a, converters :c, purchases :p, revenue :r, revenue_sq :q, points :pt",
                )
                .expression_attribute_values(":a", n(c.assigned))
                .expression_attribute_values(":c", n(c.converters))
                .expression_attribute_values(":p", n(c.purchases))
                .expression_attribute_values(":r", n(c.revenue))
                .expression_attribute_values(":q", n(c.revenue_sq))
                .expression_attribute_values(":pt", n(c.points))
                .build(),
        )?;
        Ok(TransactWriteItem::builder().update(update).build())
    }

    /// Adds a commit's counters to its day's item in its shard of the books (`ADD` creates
    /// the item and each counter the first time).
    fn books_write(
        &self,
        program: &str,
        add: &BooksAdd,
    ) -> Result<Option<TransactWriteItem>, StoreError> {
        let Some(day) = add.day.filter(|_| !add.is_empty()) else {
            return Ok(None);
        };
        let mut update = Update::builder()
            .table_name(&self.table)
            .set_key(Some(key(books_pk(program, add.shard), format!("D#{day}"))));
        let mut terms = Vec::with_capacity(add.counts.len());
        for (i, (name, value)) in add.counts.iter().enumerate() {
            terms.push(format!("#c{i} :c{i}"));
            update = update
                .expression_attribute_names(format!("#c{i}"), name)
                .expression_attribute_values(format!(":c{i}"), n(value));
        }
        let update = build(
            "update",
            update
                .update_expression(format!("ADD {}", terms.join(", ")))
                .build(),
        )?;
        Ok(Some(TransactWriteItem::builder().update(update).build()))
    }

    /// A scan of the table's items whose body a filter of [`forget_filter`] finds.
    fn payload_scan(
        &self,
        (filter, values): (String, HashMap<String, AttributeValue>),
    ) -> aws_sdk_dynamodb::operation::scan::builders::ScanFluentBuilder {
        self.client
            .scan()
            .table_name(&self.table)
            .expression_attribute_names("#b", "body")
            .set_expression_attribute_values(Some(values))
            .filter_expression(filter)
            .consistent_read(true)
    }

    /// Sends one commit's transaction. A cancellation is not an error of the store: it comes
    /// back as the reason of each item (a code where its condition failed).
    async fn transact(
        &self,
        writes: Vec<TransactWriteItem>,
    ) -> Result<Result<(), Vec<Option<String>>>, StoreError> {
        match self
            .client
            .transact_write_items()
            .set_transact_items(Some(writes))
            .send()
            .await
        {
            Ok(_) => Ok(Ok(())),
            Err(e) => match e.as_service_error() {
                Some(TransactWriteItemsError::TransactionCanceledException(cancelled)) => {
                    Ok(Err(cancelled
                        .cancellation_reasons()
                        .iter()
                        .map(|r| r.code().map(str::to_string))
                        .collect()))
                }
                // The request as it is (an item over 400 KB, a transaction over 4 MB): sent
                // again it is refused again.
                _ if e.code() == Some("ValidationException") => Err(StoreError::Unfit {
                    message: format!(
                        "the table refused the commit: {}",
                        e.message().unwrap_or("ValidationException")
                    ),
                }),
                _ => Err(sdk_error("cannot commit", e)),
            },
        }
    }

    /// An order record's write. It is updated in place, never replaced, so that it keeps the
    /// markers of the events kept on it ([`Commit::marker_order`]); the event's marker is
    /// added on condition that it is not there yet. It takes the commit's account version as
    /// its revision and, given the revision read (`revisions.0`, a read that may be a moment
    /// old), is written on condition that the record still has it; else the account's version
    /// guards the record.
    fn order_write(
        &self,
        pk: &str,
        order_key: &str,
        record: &OrderRecord,
        marker: Option<&EventMarker>,
        revisions: (Option<u64>, u64),
    ) -> Result<TransactWriteItem, StoreError> {
        let (read, written) = revisions;
        let mut update = Update::builder()
            .table_name(&self.table)
            .set_key(Some(key(pk, format!("O#{order_key}"))))
            .expression_attribute_names("#b", "body")
            .expression_attribute_names("#r", REVISION)
            .expression_attribute_values(":b", encode_deflated("order", record)?)
            .expression_attribute_values(":r", n(written));
        let mut conditions = Vec::new();
        update = match marker {
            None => update.update_expression("SET #b = :b, #r = :r"),
            Some(marker) => {
                conditions.push("NOT contains(#m, :e)");
                update
                    .update_expression("SET #b = :b, #r = :r ADD #m :m")
                    .expression_attribute_names("#m", MARKERS)
                    .expression_attribute_values(":m", AttributeValue::Ss(vec![marker_sk(marker)]))
                    .expression_attribute_values(":e", s(marker_sk(marker)))
            }
        };
        update = match read {
            None => update,
            Some(0) => {
                conditions.push("attribute_not_exists(#r)");
                update
            }
            Some(read) => {
                conditions.push("#r = :read");
                update.expression_attribute_values(":read", n(read))
            }
        };
        if !conditions.is_empty() {
            update = update.condition_expression(conditions.join(" AND "));
        }
        let update = build("update", update.build())?;
        Ok(TransactWriteItem::builder().update(update).build())
    }

    async fn cancelled_without_reasons(&self, commit: &Commit) -> Option<CommitError> {
        if let Some(record) = &commit.idempotency {
            let key = idempotency_key(&commit.program, &record.principal, &record.key);
            match self.get(key).await {
                Ok(Some(item)) if !expired(&item) => return Some(CommitError::Duplicate),
                Ok(_) => {}
                Err(e) => return Some(CommitError::Store(e)),
            }
        }
        if let Some(code) = &commit.revoke_coupon {
            match self.get(coupon_key(&commit.program, code)).await {
                Ok(Some(item)) if item.contains_key("consumed_ref") => {
                    return Some(CommitError::CouponConsumed)
                }
                Ok(_) => {}
                Err(e) => return Some(CommitError::Store(e)),
            }
        }
        if let Some(quota) = &commit.quota {
            match self.get(quota_key(&commit.program, quota)).await {
                Ok(Some(item))
                    if number(&item, "used")
                        .and_then(|used| i64::try_from(used).ok())
                        .is_some_and(|used| used > quota.room()) =>
                {
                    return Some(CommitError::OverQuota)
                }
                Ok(_) => {}
                Err(e) => return Some(CommitError::Store(e)),
            }
        }
        None
    }
}

#[async_trait]
impl RedemptionStore for DynamoStore {
    async fn redemption(
        &self,
        program: &str,
        member: &str,
        id: &str,
    ) -> Result<Option<Redemption>, StoreError> {
        let item = self
            .get(key(member_pk(program, member), format!("R#{id}")))
            .await?;
        item.map(|i| body(&i, "redemption")).transpose()
    }

    async fn coupon(&self, program: &str, code: &str) -> Result<Option<Coupon>, StoreError> {
        let item = self.get(coupon_key(program, code)).await?;
        item.map(|i| coupon_of(&i)).transpose()
    }

    async fn consume_coupon(
        &self,
        program: &str,
        code: &str,
        order_ref: &str,
        now: DateTime<Utc>,
    ) -> Result<Consumption, StoreError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(coupon_key(program, code)))
            .update_expression("SET consumed_ref = :ref, consumed_at = :now")
            .condition_expression(
                "attribute_exists(PK) AND attribute_not_exists(consumed_ref) \
                 AND attribute_not_exists(revoked) AND valid_until >= :second",
            )
            .expression_attribute_values(":ref", s(order_ref))
            .expression_attribute_values(":now", s(timestamp(now)))
            .expression_attribute_values(":second", s(timestamp(coupon_second(now))))
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        match result {
            Ok(output) => {
                if let Some(item) = output.attributes {
                    return Ok(Consumption::Consumed(coupon_of(&item)?));
                }
            }
            Err(e)
                if matches!(
                    e.as_service_error(),
                    Some(UpdateItemError::ConditionalCheckFailedException(_))
                ) => {}
            Err(e) => return Err(sdk_error("cannot consume the coupon", e)),
        }
        // Refused: read what is there to say why (or that it is this order's, a retry).
        let Some(coupon) = self.coupon(program, code).await? else {
            return Ok(Consumption::NotFound);
        };
        Ok(match &coupon.consumed {
            Some(c) if c.order_ref == order_ref => Consumption::Consumed(coupon),
            Some(_) => Consumption::AlreadyConsumed(coupon),
            None if coupon.revoked => Consumption::Revoked(coupon),
            None => Consumption::Expired(coupon),
        })
    }

    async fn idempotency_record(
        &self,
        program: &str,
        principal: &str,
        request_key: &str,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        let item = self
            .get(idempotency_key(program, principal, request_key))
            .await?;
        item.map(|i| idempotency_of(&i))
            .transpose()
            .map(Option::flatten)
    }

    /// One strongly consistent BatchGetItem of the account, its assignments and the record.
    async fn load_member_and_request(
        &self,
        program: &str,
        member: &str,
        campaigns: &[String],
        principals: &[&str],
        request_key: &str,
    ) -> Result<(MemberState, Option<IdempotencyRecord>), StoreError> {
        let pk = member_pk(program, member);
        let mut keys = member_keys(&pk, None, &[], campaigns);
        let mut asked: Vec<&str> = Vec::new();
        for principal in principals {
            if !asked.contains(principal) {
                asked.push(principal);
                keys.push(idempotency_key(program, principal, request_key));
            }
        }
        let (records, items): (Vec<Item>, Vec<Item>) = self
            .batch_get(keys)
            .await?
            .into_iter()
            .partition(|item| text(item, "SK") == Some(IDEMPOTENCY_SK));
        let mut found = Vec::new();
        for item in &records {
            found.extend(idempotency_of(item)?);
        }
        // The first principal's; a record whose key only collides (its principal is none of
        // these) is still returned, for the caller to refuse.
        let rank = |r: &IdempotencyRecord| {
            asked
                .iter()
                .position(|p| *p == r.principal)
                .unwrap_or(asked.len())
        };
        found.sort_by_key(rank);
        Ok((member_state(&pk, items)?, found.into_iter().next()))
    }
}

/// An idempotency record from its item; `None` past its expiry (TTL deletes an expired item
/// within days, not at once: past its expiry it is gone).
fn idempotency_of(item: &Item) -> Result<Option<IdempotencyRecord>, StoreError> {
    let record: IdempotencyRecord = body(item, "idempotency record")?;
    Ok(Some(record).filter(|r| r.expires_at > Utc::now()))
}

/// An item whose TTL attribute has passed (TTL deletes it later, at its own pace).
fn expired(item: &Item) -> bool {
    number(item, "expires_at")
        .and_then(|at| i64::try_from(at).ok())
        .is_some_and(|at| at < Utc::now().timestamp())
}

/// A commit of an account, its entries, messages, books and campaign counters, and perhaps an
/// event's marker, order records and campaign assignments: nothing that writes items outside
/// the member's partition but the books and counters it adds to (merged with the others'),
/// not a coupon, a redemption or an idempotency record.
fn groupable(commit: &Commit) -> bool {
    commit.redemption.is_none()
        && commit.copied_redemptions.is_empty()
        && commit.coupon.is_none()
        && commit.revoke_coupon.is_none()
        && commit.idempotency.is_none()
        && commit.quota.is_none()
}

fn refused(message: &str) -> StoreError {
    StoreError::Failed {
        message: message.to_string(),
        source: None,
    }
}

/// The attribute of an order record that holds the markers kept on it (a string set).
const MARKERS: &str = "markers";

/// The attribute of an order record that holds its revision: the account version of the commit
/// that last wrote it (absent on records written before revisions were kept: revision 0).
const REVISION: &str = "rev";

/// Whether an event had its effect: its marker is among `items`, or on one of them that is an
/// order record.
fn marked(items: &[Item], marker_key: &str) -> bool {
    items.iter().any(|item| {
        text(item, "SK") == Some(marker_key)
            || matches!(item.get(MARKERS), Some(AttributeValue::Ss(set)) if set.iter().any(|m| m == marker_key))
    })
}

fn marker_sk(marker: &EventMarker) -> String {
    format!("E#{}#{}", marker.source, marker.event_id)
}

impl DynamoStore {
    /// A program item (the current version or a saved copy).
    async fn program_item(
        &self,
        program: &str,
        sk: &str,
    ) -> Result<Option<StoredProgram>, StoreError> {
        match self.get(key(format!("P#{program}"), sk)).await? {
            Some(item) => stored_program(program, &item).map(Some),
            None => Ok(None),
        }
    }

    /// The items of the program's partition from `from` to its current version: campaigns
    /// (`C#`), then jobs' progress (`JOB#`), then `PROGRAM#CURRENT` (its saved copies,
    /// `PROGRAM#v{n}`, sort after it).
    async fn program_range(&self, program: &str, from: &str) -> Result<Vec<Item>, StoreError> {
        let mut items = Vec::new();
        let mut start = None;
        loop {
            let output = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("PK = :pk AND SK BETWEEN :from AND :to")
                .expression_attribute_values(":pk", s(format!("P#{program}")))
                .expression_attribute_values(":from", s(from))
                .expression_attribute_values(":to", s(PROGRAM_CURRENT))
                .consistent_read(true)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| sdk_error("cannot read the program", e))?;
            items.extend(output.items.unwrap_or_default());
            match output.last_evaluated_key {
                Some(last) => start = Some(last),
                None => return Ok(items),
            }
        }
    }
}

/// The sort key of a program's current version.
const PROGRAM_CURRENT: &str = "PROGRAM#CURRENT";

/// A program item (the current version or a saved copy) as stored.
fn stored_program(program: &str, item: &Item) -> Result<StoredProgram, StoreError> {
    let corrupt = |message: &str| StoreError::Corrupt {
        key: format!("program {program}"),
        message: message.to_string(),
    };
    let version = number(item, "version")
        .and_then(|v| u32::try_from(v).ok())
        .ok_or_else(|| corrupt("no version"))?;
    let file_json = text(item, "body")
        .ok_or_else(|| corrupt("no body"))?
        .to_string();
    let updated_at = text(item, "updated_at")
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc))
        .ok_or_else(|| corrupt("no updated_at"))?;
    Ok(StoredProgram {
        version,
        file_json,
        updated_at,
    })
}

#[async_trait]
impl ProgramStore for DynamoStore {
    async fn get_program(&self, program: &str) -> Result<Option<StoredProgram>, StoreError> {
        self.program_item(program, PROGRAM_CURRENT).await
    }

    async fn program_head(
        &self,
        program: &str,
        parts: HeadParts<'_>,
    ) -> Result<ProgramHead, StoreError> {
        let from = match parts {
            HeadParts {
                campaigns: true, ..
            } => "C#",
            HeadParts { job: Some(_), .. } => "JOB#",
            _ => {
                return Ok(ProgramHead {
                    program: self.get_program(program).await?,
                    ..ProgramHead::default()
                })
            }
        };
        let job = parts.job.map(|j| format!("JOB#{j}"));
        let mut head = ProgramHead::default();
        for item in self.program_range(program, from).await? {
            match text(&item, "SK").unwrap_or_default() {
                PROGRAM_CURRENT => head.program = Some(stored_program(program, &item)?),
                sk if Some(sk) == job.as_deref() => {
                    head.progress = text(&item, "progress").map(str::to_string)
                }
                sk if parts.campaigns => {
                    if let (Some(id), Some(body)) = (sk.strip_prefix("C#"), text(&item, "body")) {
                        head.campaigns.push((id.to_string(), body.to_string()));
                    }
                }
                _ => {}
            }
        }
        Ok(match head.program {
            Some(_) => head,
            None => ProgramHead::default(),
        })
    }

    async fn program_versions(
        &self,
        program: &str,
    ) -> Result<Vec<(u32, DateTime<Utc>)>, StoreError> {
        let mut versions = Vec::new();
        let mut start = None;
        loop {
            let output = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("PK = :pk AND begins_with(SK, :v)")
                .expression_attribute_values(":pk", s(format!("P#{program}")))
                .expression_attribute_values(":v", s("PROGRAM#v"))
                .projection_expression("version, updated_at")
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| sdk_error("cannot list the program versions", e))?;
            for item in output.items() {
                let version = number(item, "version").and_then(|v| u32::try_from(v).ok());
                let at = text(item, "updated_at")
                    .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                    .map(|t| t.with_timezone(&Utc));
                match (version, at) {
                    (Some(v), Some(at)) => versions.push((v, at)),
                    _ => {
                        return Err(StoreError::Corrupt {
                            key: format!("program {program}"),
                            message: "a version without its number or time".into(),
                        })
                    }
                }
            }
            match output.last_evaluated_key {
                Some(last) => start = Some(last),
                None => break,
            }
        }
        // Sort keys order v10 before v2: the numbers decide.
        versions.sort_by_key(|v| std::cmp::Reverse(v.0));
        Ok(versions)
    }

    async fn program_version(
        &self,
        program: &str,
        version: u32,
    ) -> Result<Option<StoredProgram>, StoreError> {
        self.program_item(program, &format!("PROGRAM#v{version}"))
            .await
    }

    async fn put_program(
        &self,
        program: &str,
        file_json: &str,
        expected: Option<u32>,
        at: DateTime<Utc>,
    ) -> Result<Option<u32>, StoreError> {
        let version = expected.unwrap_or(0) + 1;
        let item = |sk: String| {
            let mut item = key(format!("P#{program}"), sk);
            item.insert("version".into(), n(version));
            item.insert("body".into(), s(file_json));
            item.insert(
                "updated_at".into(),
                s(at.to_rfc3339_opts(SecondsFormat::Millis, true)),
            );
            item
        };
        let current = match expected {
            None => self.put(
                item(PROGRAM_CURRENT.into()),
                Some("attribute_not_exists(PK)"),
                None,
            )?,
            Some(v) => self.put(
                item(PROGRAM_CURRENT.into()),
                Some("version = :expected"),
                Some(HashMap::from([(":expected".to_string(), n(v))])),
            )?,
        };
        let copy = self.put(
            item(format!("PROGRAM#v{version}")),
            Some("attribute_not_exists(PK)"),
            None,
        )?;
        // Listed once, for the jobs that go through every program.
        let listed = self.put(key(PROGRAMS_PK, program), None, None)?;
        match self
            .client
            .transact_write_items()
            .transact_items(current)
            .transact_items(copy)
            .transact_items(listed)
            .send()
            .await
        {
            Ok(_) => Ok(Some(version)),
            Err(e) => match e.as_service_error() {
                // The current version's condition (the first item): saved meanwhile.
                Some(TransactWriteItemsError::TransactionCanceledException(cancelled))
                    if first_condition_failed(&cancellation_codes(cancelled)) =>
                {
                    Ok(None)
                }
                // A throttle or another writer's transaction: the same save goes through later.
                Some(TransactWriteItemsError::TransactionCanceledException(cancelled))
                    if cancelled_for_now(&cancellation_codes(cancelled)) =>
                {
                    Err(StoreError::transient(
                        "the program save met a throttle or another write; try again",
                        e,
                    ))
                }
                _ => Err(sdk_error("cannot save the program", e)),
            },
        }
    }
}

#[async_trait]
impl MemberStore for DynamoStore {
    async fn load_member_with(
        &self,
        program: &str,
        member: &str,
        order_keys: &[String],
        campaigns: &[String],
    ) -> Result<MemberState, StoreError> {
        let pk = member_pk(program, member);
        let keys = member_keys(&pk, None, order_keys, campaigns);
        member_state(&pk, self.batch_get(keys).await?)
    }

    /// Strongly consistent ([`DynamoStore::member_for_event`]).
    async fn load_member_for_event(
        &self,
        program: &str,
        member: &str,
        marker: &EventMarker,
        order_keys: &[String],
        campaigns: &[String],
    ) -> Result<MemberState, StoreError> {
        self.member_for_event(program, member, marker, order_keys, campaigns, true)
            .await
    }

    /// Eventually consistent, half the read units: a stale account fails its commit's version
    /// condition, a stale order record or assignment its revision condition, a stale miss of
    /// the marker the marker's condition.
    async fn load_member_for_event_cheaply(
        &self,
        program: &str,
        member: &str,
        marker: &EventMarker,
        order_keys: &[String],
        campaigns: &[String],
    ) -> Result<MemberState, StoreError> {
        self.member_for_event(program, member, marker, order_keys, campaigns, false)
            .await
    }

    /// The assignments' items alone, strongly consistent (1 read unit each).
    async fn load_assignments(
        &self,
        program: &str,
        member: &str,
        campaigns: &[String],
    ) -> Result<MemberState, StoreError> {
        let pk = member_pk(program, member);
        let keys = campaigns
            .iter()
            .map(|c| key(&pk, format!("A#{c}")))
            .collect();
        let items = self
            .batch_read(keys, true, "cannot read the assignments")
            .await?;
        member_state(&pk, items)
    }

    async fn commit(&self, commit: Commit) -> Result<(), CommitError> {
        if let Some(refused) = super::unfit(&commit) {
            return Err(refused.into());
        }
        let (mut writes, marker_index, special) = self.commit_writes(&commit)?;
        for add in &commit.counters {
            writes.push(self.counter_write(&commit.program, add)?);
        }
        if let Some(write) = self.books_write(&commit.program, &commit.books)? {
            writes.push(write);
        }
        match self.transact(writes).await? {
            Ok(()) => Ok(()),
            Err(reasons) => Err(self
                .cancelled(&commit, marker_index, special, reasons)
                .await),
        }
    }

    fn commits_together_atomically(&self) -> bool {
        true
    }

    /// One transaction. Commits of an account, its entries, messages, books and campaign
    /// counters, and an event's marker, order records and campaign assignments (what the
    /// scheduled jobs and earn write) go together, one per member; a cancellation is reported
    /// as a conflict, and the caller's commits one by one tell what it was (a duplicate, a
    /// conflict). The books of a day and a variant's counters are each one write, in the shard
    /// of the first commit that adds to them: their readers sum the shards.
    async fn commit_together(&self, commits: Vec<Commit>) -> Result<(), CommitError> {
        if commits.len() == 1 {
            if let Some(commit) = commits.into_iter().next() {
                return self.commit(commit).await;
            }
            return Ok(());
        }
        let mut writes = Vec::new();
        let mut books: BTreeMap<(&str, NaiveDate), BooksAdd> = BTreeMap::new();
        let mut counters: BTreeMap<(&str, &str, &str), CounterAdd> = BTreeMap::new();
        let mut members = HashSet::with_capacity(commits.len());
        for commit in &commits {
            if !groupable(commit) {
                return Err(refused("only plain commits and events' commits go together").into());
            }
            // One transaction writes an item once: two commits on one member go one by one.
            if !members.insert((&commit.program, &commit.member)) {
                return Err(refused("two commits on one member do not go together").into());
            }
            if let Some(refused) = super::unfit(commit) {
                return Err(refused.into());
            }
            writes.extend(self.commit_writes(commit)?.0);
            if let Some(day) = commit.books.day.filter(|_| !commit.books.is_empty()) {
                books
                    .entry((&commit.program, day))
                    .and_modify(|add| add.absorb(&commit.books))
                    .or_insert_with(|| commit.books.clone());
            }
            for add in &commit.counters {
                counters
                    .entry((&commit.program, &add.campaign, &add.counts.variant))
                    .and_modify(|sum| sum.counts.add(&add.counts))
                    .or_insert_with(|| add.clone());
            }
        }
        for ((program, _), add) in &books {
            writes.extend(self.books_write(program, add)?);
        }
        for ((program, _, _), add) in &counters {
            writes.push(self.counter_write(program, add)?);
        }
        if writes.len() > super::MAX_COMMIT_ITEMS {
            return Err(refused("commits together are more than one transaction can hold").into());
        }
        self.transact(writes)
            .await?
            .map_err(|_| CommitError::VersionConflict)
    }

    async fn ledger_page(
        &self,
        program: &str,
        member: &str,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<LedgerPage, StoreError> {
        let limit = limit.clamp(1, 100);
        let upper = match cursor {
            Some(c) => {
                let seq = decode_cursor(c).ok_or_else(|| StoreError::Failed {
                    message: format!("invalid cursor {c:?}"),
                    source: None,
                })?;
                // Strictly older than the last entry returned.
                format!("L#{}", seq_key(seq.saturating_sub(1)))
            }
            None => "L#~".to_string(),
        };
        let output = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("PK = :pk AND SK BETWEEN :lo AND :hi")
            .expression_attribute_values(":pk", s(member_pk(program, member)))
            .expression_attribute_values(":lo", s("L#"))
            .expression_attribute_values(":hi", s(upper))
            .scan_index_forward(false)
            .limit(limit as i32)
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk_error("cannot read the ledger", e))?;
        let items = output.items.unwrap_or_default();
        let mut entries = Vec::with_capacity(items.len());
        let mut last_seq = None;
        for item in &items {
            let sk = text(item, "SK").unwrap_or_default();
            entries.push(body::<LedgerEntry>(item, sk)?);
            last_seq = sk.strip_prefix("L#").and_then(|q| q.parse::<u64>().ok());
        }
        let next_cursor = match last_seq {
            Some(seq) if entries.len() == limit && seq > 0 => Some(encode_cursor(seq)),
            _ => None,
        };
        Ok(LedgerPage {
            entries,
            next_cursor,
        })
    }

    async fn has_marker(
        &self,
        program: &str,
        member: &str,
        marker: &EventMarker,
    ) -> Result<bool, StoreError> {
        Ok(self
            .get(key(member_pk(program, member), marker_sk(marker)))
            .await?
            .is_some())
    }
}

/// The keys of a member's batch read: the account, the event's marker when there is one, the
/// order records and the campaign assignments asked for.
fn member_keys(
    pk: &str,
    marker: Option<&str>,
    order_keys: &[String],
    campaigns: &[String],
) -> Vec<Item> {
    let mut keys = vec![key(pk, "ACCOUNT")];
    keys.extend(marker.map(|sk| key(pk, sk)));
    keys.extend(order_keys.iter().map(|k| key(pk, format!("O#{k}"))));
    keys.extend(campaigns.iter().map(|c| key(pk, format!("A#{c}"))));
    keys
}

/// The account, order records and assignments among the items of a member's batch read.
fn member_state(
    pk: &str,
    items: Vec<HashMap<String, AttributeValue>>,
) -> Result<MemberState, StoreError> {
    let mut state = MemberState::default();
    for item in items {
        match text(&item, "SK") {
            Some("ACCOUNT") => {
                state.account = Some(body::<Account>(&item, &format!("account {pk}"))?)
            }
            Some(sk) => {
                if let Some(order_key) = sk.strip_prefix("O#") {
                    let record = body::<OrderRecord>(&item, sk)?;
                    state.orders.insert(order_key.to_string(), record);
                    let revision = number(&item, REVISION).unwrap_or(0);
                    state
                        .order_revisions
                        .insert(order_key.to_string(), revision);
                } else if let Some(campaign) = sk.strip_prefix("A#") {
                    let assignment = body::<Assignment>(&item, sk)?;
                    state.assignments.insert(campaign.to_string(), assignment);
                    let revision = number(&item, REVISION).unwrap_or(0);
                    state
                        .assignment_revisions
                        .insert(campaign.to_string(), revision);
                }
            }
            None => {}
        }
    }
    Ok(state)
}

#[async_trait]
impl AliasStore for DynamoStore {
    async fn resolve_alias(
        &self,
        program: &str,
        kind: &str,
        value: &str,
    ) -> Result<Option<String>, StoreError> {
        self.alias_member(program, kind, value, true).await
    }

    async fn linked_alias(
        &self,
        program: &str,
        kind: &str,
        value: &str,
    ) -> Result<Option<String>, StoreError> {
        self.alias_member(program, kind, value, false).await
    }

    /// One BatchGetItem, possibly a moment old, for the links of a delivery (at most a few: an
    /// order and an event's identities), at most 100 at a time.
    async fn linked_aliases(
        &self,
        program: &str,
        links: &[(&str, &str)],
    ) -> Result<Vec<Linked>, StoreError> {
        self.links(program, links, false).await
    }

    async fn resolve_aliases(
        &self,
        program: &str,
        links: &[(&str, &str)],
    ) -> Result<Vec<Option<String>>, StoreError> {
        let found = self.links(program, links, true).await?;
        Ok(found.into_iter().map(|linked| linked.member).collect())
    }

    async fn put_alias(
        &self,
        program: &str,
        kind: &str,
        value: &str,
        member: &str,
    ) -> Result<bool, StoreError> {
        if kind == ORDER_LINK {
            return Ok(self.link_order(program, value, member).await?.written);
        }
        let result = self
            .client
            .transact_write_items()
            .set_transact_items(Some(
                self.alias_items(program, kind, value, member)?.to_vec(),
            ))
            .send()
            .await;
        alias_written(result, "cannot link the identity")
    }
    /// One transaction for them all (2 write units per item, as apart: one request instead of
    /// one each). A link held by another member cancels it: each is then written alone, which
    /// answers for each.
    async fn put_aliases(
        &self,
        program: &str,
        identities: &[(&str, &str)],
        member: &str,
    ) -> Result<Vec<bool>, StoreError> {
        let mut distinct = identities.to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        let together = identities.len() > 1
            && distinct.len() == identities.len()
            && identities.len() <= MAX_ALIASES_TOGETHER
            && identities.iter().all(|(kind, _)| *kind != ORDER_LINK);
        if together {
            let mut items = Vec::with_capacity(2 * identities.len());
            for (kind, value) in identities {
                items.extend(self.alias_items(program, kind, value, member)?);
            }
            let written = self
                .client
                .transact_write_items()
                .set_transact_items(Some(items))
                .send()
                .await;
            if alias_written(written, "cannot link the identities")? {
                return Ok(vec![true; identities.len()]);
            }
        }
        crate::ports::put_each(self, program, identities, member).await
    }

    /// An order's link to its member is one item, without the member's side that other
    /// identities have: one is written for every new order (1 write unit, against 4 for a
    /// two-item transaction), and nothing lists a member's orders through it (the member's
    /// order records do). The erasure of the member finds these links by a scan. It is an
    /// update, so that it keeps the mark of events parked before it, and returns that mark.
    async fn link_order(
        &self,
        program: &str,
        order_key: &str,
        member: &str,
    ) -> Result<OrderLinked, StoreError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(alias_key(program, ORDER_LINK, order_key)))
            .update_expression("SET #m = :m")
            .condition_expression("attribute_not_exists(#m) OR #m = :m")
            .expression_attribute_names("#m", "member")
            .expression_attribute_values(":m", s(member))
            .return_values(ReturnValue::AllOld)
            .send()
            .await;
        match result {
            Ok(output) => Ok(OrderLinked {
                written: true,
                awaited: output.attributes().is_some_and(|old| linked(old).awaited),
            }),
            Err(e)
                if matches!(
                    e.as_service_error(),
                    Some(UpdateItemError::ConditionalCheckFailedException(_))
                ) =>
            {
                Ok(OrderLinked {
                    written: false,
                    awaited: true,
                })
            }
            Err(e) => Err(sdk_error("cannot link the order", e)),
        }
    }

    async fn move_alias(
        &self,
        program: &str,
        kind: &str,
        value: &str,
        from: &str,
        to: &str,
    ) -> Result<bool, StoreError> {
        let mut item = alias_key(program, kind, value);
        item.insert("member".into(), s(to));
        let alias = build(
            "alias",
            Put::builder()
                .table_name(&self.table)
                .set_item(Some(item))
                .condition_expression("attribute_not_exists(PK) OR #m = :from OR #m = :to")
                .expression_attribute_names("#m", "member")
                .expression_attribute_values(":from", s(from))
                .expression_attribute_values(":to", s(to))
                .build(),
        )?;
        let sk = format!("I#{kind}#{value}");
        // The old member's side is marked moved rather than deleted: finishing a merge (the
        // earn function, from the merge's message) then needs no delete permission.
        let mut moved = key(member_pk(program, from), sk.clone());
        moved.insert("moved_to".into(), s(to));
        let result = self
            .client
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().put(alias).build())
            .transact_items(self.put(key(member_pk(program, to), sk), None, None)?)
            .transact_items(self.put(moved, None, None)?)
            .send()
            .await;
        alias_written(result, "cannot move the identity")
    }

    async fn remove_alias(
        &self,
        program: &str,
        kind: &str,
        value: &str,
        member: &str,
    ) -> Result<(), StoreError> {
        let alias = build(
            "delete",
            Delete::builder()
                .table_name(&self.table)
                .set_key(Some(alias_key(program, kind, value)))
                .condition_expression("attribute_not_exists(PK) OR #m = :m")
                .expression_attribute_names("#m", "member")
                .expression_attribute_values(":m", s(member))
                .build(),
        )?;
        let mine = build(
            "delete",
            Delete::builder()
                .table_name(&self.table)
                .set_key(Some(key(
                    member_pk(program, member),
                    format!("I#{kind}#{value}"),
                )))
                .build(),
        )?;
        let result = self
            .client
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().delete(alias).build())
            .transact_items(TransactWriteItem::builder().delete(mine).build())
            .send()
            .await;
        // Linked to another member: only the member's own side was stale, and it stays until
        // the other's link is moved or removed.
        alias_written(result, "cannot unlink the identity").map(|_| ())
    }
}

impl DynamoStore {
    /// The keys of the order links of `member` (see [`DynamoStore::put_order_link`]).
    async fn order_links(&self, program: &str, member: &str) -> Result<Vec<Item>, StoreError> {
        self.client
            .scan()
            .table_name(&self.table)
            .filter_expression("begins_with(PK, :links) AND SK = :alias AND #m = :m")
            .expression_attribute_names("#m", "member")
            .expression_attribute_values(":links", s(format!("P#{program}#ID#{ORDER_LINK}#")))
            .expression_attribute_values(":alias", s("ALIAS"))
            .expression_attribute_values(":m", s(member))
            .projection_expression("PK, SK")
            .consistent_read(true)
            .into_paginator()
            .items()
            .send()
            .collect::<Result<Vec<Item>, _>>()
            .await
            .map_err(|e| sdk_error("cannot find the member's order links", e))
    }
}

/// Whether a conditional `PutItem` wrote (true) or found its condition false (false).
fn put_written<T, R>(
    result: Result<T, SdkError<aws_sdk_dynamodb::operation::put_item::PutItemError, R>>,
    what: &str,
) -> Result<bool, StoreError>
where
    R: std::fmt::Debug + Send + Sync + 'static,
{
    use aws_sdk_dynamodb::operation::put_item::PutItemError;
    match result {
        Ok(_) => Ok(true),
        Err(e)
            if matches!(
                e.as_service_error(),
                Some(PutItemError::ConditionalCheckFailedException(_))
            ) =>
        {
            Ok(false)
        }
        Err(e) => Err(sdk_error(what, e)),
    }
}

/// `true` when an alias transaction went through, `false` when its condition on the alias
/// (linked to someone else) refused it.
fn alias_written<T, R>(
    result: Result<T, SdkError<TransactWriteItemsError, R>>,
    what: &str,
) -> Result<bool, StoreError>
where
    R: std::fmt::Debug + Send + Sync + 'static,
{
    match result {
        Ok(_) => Ok(true),
        Err(e) => match e.as_service_error() {
            Some(TransactWriteItemsError::TransactionCanceledException(cancelled)) => {
                let codes = cancellation_codes(cancelled);
                if codes.contains(&Some("ConditionalCheckFailed")) {
                    Ok(false)
                } else if cancelled_for_now(&codes) {
                    let message = format!("{what}: a throttle or another write met it");
                    Err(StoreError::transient(message, e))
                } else {
                    Err(sdk_error(what, e))
                }
            }
            _ => Err(sdk_error(what, e)),
        },
    }
}

/// Whether a transaction was cancelled by something a later try gets past: a throttle, or
/// another writer's transaction on one of its items (no condition refused it).
fn cancelled_for_now(codes: &[Option<&str>]) -> bool {
    codes.iter().flatten().any(|code| {
        matches!(
            *code,
            "ThrottlingError"
                | "ProvisionedThroughputExceeded"
                | "RequestLimitExceeded"
                | "TransactionConflict"
        )
    })
}

/// A rejected event by id: its record, its replay count and where it is listed.
fn rejected_key(program: &str, event_id: &str) -> Item {
    key(format!("P#{program}#REJECTED#E#{event_id}"), "R")
}

/// The day partition that lists a rejection, and its place in it.
fn rejected_list_key(program: &str, at: DateTime<Utc>, event_id: &str) -> (String, String) {
    (
        format!("P#{program}#REJECTED#{}", at.format("%Y-%m-%d")),
        format!(
            "{}#{event_id}",
            at.to_rfc3339_opts(SecondsFormat::Millis, true)
        ),
    )
}

fn rejected_of(item: &Item) -> Result<RejectedEvent, StoreError> {
    let mut event: RejectedEvent = body(item, "rejected event")?;
    event.replays = number(item, "replays").map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX));
    Ok(event)
}

#[async_trait]
impl RejectStore for DynamoStore {
    /// Two items in one write: the event's record (by id, keeping its replay count) and its
    /// place in the day's list (one partition per day, so a flood of rejections has no hot
    /// key). A record refused again is listed on its new day; its old place is skipped.
    async fn reject(&self, rejected: &RejectedEvent) -> Result<(), StoreError> {
        let (list_pk, list_sk) =
            rejected_list_key(&rejected.program, rejected.at, &rejected.event_id);
        let mut listed = key(list_pk.clone(), list_sk.clone());
        listed.insert("event_id".into(), s(&rejected.event_id));
        let list = self.put(listed, None, None)?;
        let record = build(
            "update",
            Update::builder()
                .table_name(&self.table)
                .set_key(Some(rejected_key(&rejected.program, &rejected.event_id)))
                .update_expression("SET body = :b, list_pk = :lp, list_sk = :ls")
                .expression_attribute_values(":b", encode("rejected event", rejected)?)
                .expression_attribute_values(":lp", s(list_pk))
                .expression_attribute_values(":ls", s(list_sk))
                .build(),
        )?;
        self.client
            .transact_write_items()
            .transact_items(list)
            .transact_items(TransactWriteItem::builder().update(record).build())
            .send()
            .await
            .map_err(|e| sdk_error("cannot record the rejected event", e))?;
        Ok(())
    }

    /// Walks the day lists back from the cursor's day (or today) over [`REJECTED_DAYS`], then
    /// reads the records of the page in one batch.
    async fn rejected_page(
        &self,
        program: &str,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<RejectedPage, StoreError> {
        let after = match cursor.map(parse_rejected_cursor) {
            None => None,
            Some(Some(after)) => Some(after),
            Some(None) => {
                return Err(StoreError::Failed {
                    message: "the cursor is not one this store gave".into(),
                    source: None,
                })
            }
        };
        let today = Utc::now().date_naive();
        let oldest = today - Duration::days(REJECTED_DAYS);
        let mut day = after
            .as_ref()
            .map_or(today, |(at, _)| at.date_naive().min(today));
        let mut start = after.map(|(at, id)| rejected_list_key(program, at, &id));
        let mut listed: Vec<Item> = Vec::new();
        while listed.len() < limit && day >= oldest {
            let pk = format!("P#{program}#REJECTED#{day}");
            let mut query = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("PK = :pk")
                .expression_attribute_values(":pk", s(&pk))
                .scan_index_forward(false)
                .limit((limit - listed.len()) as i32);
            if let Some((spk, ssk)) = start.take().filter(|(spk, _)| *spk == pk) {
                query = query.set_exclusive_start_key(Some(key(spk, ssk)));
            }
            let output = query
                .send()
                .await
                .map_err(|e| sdk_error("cannot read rejected events", e))?;
            listed.extend(output.items.unwrap_or_default());
            // A page cut short (its limit, or 1 MB of records of the old form, which carry
            // their events) goes on from where it stopped, not from the day's start again.
            let stopped = output
                .last_evaluated_key
                .as_ref()
                .and_then(|k| k.get("SK")?.as_s().ok().cloned());
            match stopped {
                Some(sk) => start = Some((pk, sk)),
                None => day -= Duration::days(1),
            }
        }
        let next_cursor = if listed.len() >= limit {
            listed
                .last()
                .and_then(|i| text(i, "SK"))
                .and_then(|sk| sk.split_once('#'))
                .map(|(at, id)| format!("{at}|{id}"))
        } else {
            None
        };
        // An event refused again is listed at each place; its record is read once.
        let ids: std::collections::BTreeSet<String> = listed
            .iter()
            .filter_map(|i| text(i, "event_id").map(str::to_string))
            .collect();
        let keys: Vec<Item> = ids.iter().map(|id| rejected_key(program, id)).collect();
        let records: HashMap<String, Item> = if keys.is_empty() {
            HashMap::new()
        } else {
            self.batch_get(keys)
                .await?
                .into_iter()
                .filter_map(|i| text(&i, "PK").map(|pk| (pk.to_string(), i.clone())))
                .collect()
        };
        let mut events = Vec::new();
        for item in &listed {
            let here = (text(item, "PK"), text(item, "SK"));
            match text(item, "event_id") {
                Some(id) => {
                    let pk = format!("P#{program}#REJECTED#E#{id}");
                    // A place the event has since left (refused again later) is skipped.
                    if let Some(record) = records
                        .get(&pk)
                        .filter(|r| (text(r, "list_pk"), text(r, "list_sk")) == here)
                    {
                        events.push(rejected_of(record)?);
                    }
                }
                // Recorded before rejections had records of their own.
                None => events.push(body::<RejectedEvent>(item, "rejected event")?),
            }
        }
        Ok(RejectedPage {
            events,
            next_cursor,
        })
    }

    async fn rejected_event(
        &self,
        program: &str,
        event_id: &str,
    ) -> Result<Option<RejectedEvent>, StoreError> {
        self.get(rejected_key(program, event_id))
            .await?
            .map(|item| rejected_of(&item))
            .transpose()
    }

    async fn replay_rejected(
        &self,
        program: &str,
        event_id: &str,
        mark: &ReplayMark,
        message: &OutboxMessage,
    ) -> Result<bool, StoreError> {
        let replays = mark.number;
        let Some(mut event) = self.rejected_event(program, event_id).await? else {
            return Ok(false);
        };
        if event.replays + 1 != replays {
            return Ok(false);
        }
        mark.apply(&mut event);
        let mut update = Update::builder()
            .table_name(&self.table)
            .set_key(Some(rejected_key(program, event_id)))
            .update_expression("SET body = :b, replays = :n")
            .expression_attribute_values(":b", encode("rejected event", &event)?)
            .expression_attribute_values(":n", n(replays));
        update = if replays <= 1 {
            update.condition_expression("attribute_exists(PK) AND attribute_not_exists(replays)")
        } else {
            update
                .condition_expression("replays = :before")
                .expression_attribute_values(":before", n(replays - 1))
        };
        let record = build("update", update.build())?;
        let outbox = self.put(outbox_item(message)?, None, None)?;
        match self
            .client
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().update(record).build())
            .transact_items(outbox)
            .send()
            .await
        {
            Ok(_) => Ok(true),
            // The record's condition failed: replayed meanwhile. A throttle or a conflict with
            // another writer is no answer yet (moto names no reason: its cancellations are the
            // condition's).
            Err(e) => match e.as_service_error() {
                Some(TransactWriteItemsError::TransactionCanceledException(cancelled)) => {
                    match first_condition_failed(&cancellation_codes(cancelled)) {
                        true => Ok(false),
                        false => Err(StoreError::transient(
                            "the replay met another write or a throttle; try again",
                            e,
                        )),
                    }
                }
                _ => Err(sdk_error("cannot replay the rejected event", e)),
            },
        }
    }
}

#[async_trait]
impl ParkingStore for DynamoStore {
    async fn park(
        &self,
        program: &str,
        order_key: &str,
        event_id: &str,
        body: &str,
    ) -> Result<(), StoreError> {
        let mut item = key(parked_pk(program, order_key), format!("PARKED#{event_id}"));
        item.insert("body".into(), s(body));
        self.put_plain(item, "cannot park the event").await
    }

    /// The parked item, then the mark on the order's link (an update that creates a link
    /// without a member when the order is not linked yet), whose new state is the answer.
    async fn park_for_order(
        &self,
        program: &str,
        order_key: &str,
        event_id: &str,
        body: &str,
    ) -> Result<Option<String>, StoreError> {
        self.park(program, order_key, event_id, body).await?;
        let output = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(alias_key(program, ORDER_LINK, order_key)))
            .update_expression("SET #a = :t")
            .expression_attribute_names("#a", AWAITED)
            .expression_attribute_values(":t", AttributeValue::Bool(true))
            .return_values(ReturnValue::AllNew)
            .send()
            .await
            .map_err(|e| sdk_error("cannot mark the order awaited", e))?;
        Ok(output.attributes().and_then(|now| linked(now).member))
    }

    async fn parked(
        &self,
        program: &str,
        order_key: &str,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let pk = parked_pk(program, order_key);
        let mut parked = Vec::new();
        let mut start = None;
        loop {
            let output = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("PK = :pk AND begins_with(SK, :p)")
                .expression_attribute_values(":pk", s(&pk))
                .expression_attribute_values(":p", s("PARKED#"))
                .consistent_read(true)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| sdk_error("cannot read parked events", e))?;
            for item in output.items.unwrap_or_default() {
                let event = text(&item, "SK").and_then(|sk| sk.strip_prefix("PARKED#"));
                if let (Some(event), Some(body)) = (event, text(&item, "body")) {
                    parked.push((event.to_string(), body.to_string()));
                }
            }
            start = output.last_evaluated_key;
            if start.is_none() {
                return Ok(parked);
            }
        }
    }

    async fn release_parked(
        &self,
        program: &str,
        order_key: &str,
        event_id: &str,
        message: &OutboxMessage,
    ) -> Result<bool, StoreError> {
        let delete = build(
            "delete",
            Delete::builder()
                .table_name(&self.table)
                .set_key(Some(key(
                    parked_pk(program, order_key),
                    format!("PARKED#{event_id}"),
                )))
                .condition_expression("attribute_exists(PK)")
                .build(),
        )?;
        let writes = vec![
            TransactWriteItem::builder().delete(delete).build(),
            self.put(outbox_item(message)?, None, None)?,
        ];
        match self.transact(writes).await? {
            Ok(()) => Ok(true),
            // Released before (the parked item is gone): nothing to do.
            Err(reasons)
                if reasons.first().and_then(Option::as_deref) == Some("ConditionalCheckFailed") =>
            {
                Ok(false)
            }
            // The put has no condition: what is left is a conflict or throttling.
            Err(reasons) => Err(StoreError::Transient {
                message: format!("cannot release the parked event: cancelled ({reasons:?})"),
                source: None,
            }),
        }
    }

    async fn discard_parked(
        &self,
        program: &str,
        order_key: &str,
        event_id: &str,
    ) -> Result<bool, StoreError> {
        let output = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key(
                parked_pk(program, order_key),
                format!("PARKED#{event_id}"),
            )))
            .return_values(ReturnValue::AllOld)
            .send()
            .await
            .map_err(|e| sdk_error("cannot drop the parked event", e))?;
        Ok(output.attributes().is_some_and(|old| !old.is_empty()))
    }
}

impl DynamoStore {
    /// Up to `limit` messages from the items a scan finds, in the order found.
    async fn scan_messages(
        &self,
        scan: aws_sdk_dynamodb::operation::scan::builders::ScanFluentBuilder,
        limit: usize,
        messages_of: impl Fn(&Item) -> Option<Result<Vec<OutboxMessage>, StoreError>>,
    ) -> Result<Vec<OutboxMessage>, StoreError> {
        let mut messages = Vec::new();
        let mut pages = scan.into_paginator().items().send();
        while let Some(item) = pages.next().await {
            let item = item.map_err(|e| sdk_error("cannot read the outbox", e))?;
            if let Some(found) = messages_of(&item) {
                messages.extend(found?);
            }
            if messages.len() >= limit {
                messages.truncate(limit);
                break;
            }
        }
        Ok(messages)
    }
}

/// A message waiting in the outbox: in the partition of the member it is about, so its key
/// follows from the message and the stream relays it (DESIGN §5).
fn outbox_key(message: &OutboxMessage) -> Item {
    key(
        member_pk(&message.envelope.program, &message.envelope.member),
        format!("{OUTBOX_PREFIX}{}", message.key()),
    )
}

fn outbox_item(message: &OutboxMessage) -> Result<Item, StoreError> {
    let mut item = outbox_key(message);
    item.insert("queue".into(), s(message.queue.as_str()));
    item.insert("body".into(), encode("outbox message", message)?);
    Ok(item)
}

/// The attribute of a ledger entry that carries the messages of its commit.
pub const CARRIED: &str = "outbox";

/// Which of a commit's messages ride along its first ledger entry, and which wait as outbox
/// items. An entry is written anyway and the stream shows it once (entries are never
/// rewritten), so a carried message costs neither an item of its own nor the relay's delete.
/// Only messages about the committing member ride along: another member's message waits in
/// that member's partition, in order with its other messages.
fn carried_and_waiting(commit: &Commit) -> (Vec<&OutboxMessage>, Vec<&OutboxMessage>) {
    if commit.entries.is_empty() {
        return (Vec::new(), commit.outbox.iter().collect());
    }
    commit
        .outbox
        .iter()
        .partition(|message| message.envelope.member == commit.member)
}

/// The messages a ledger entry carries, from its sort key and [`CARRIED`] attribute (as the
/// table's stream shows them), or `None` for any other item.
pub fn carried_messages(sk: &str, carried: &str) -> Option<Result<Vec<OutboxMessage>, StoreError>> {
    let entry = sk.strip_prefix("L#")?;
    Some(
        serde_json::from_str(carried).map_err(|e| StoreError::Corrupt {
            key: format!("ledger/{entry}"),
            message: e.to_string(),
        }),
    )
}

/// The message of an outbox item, from its sort key and body (as the table's stream shows
/// them), or `None` for any other item.
pub fn outbox_message_parts(sk: &str, body: &str) -> Option<Result<OutboxMessage, StoreError>> {
    let key = sk.strip_prefix(OUTBOX_PREFIX)?;
    Some(serde_json::from_str(body).map_err(|e| StoreError::Corrupt {
        key: format!("outbox/{key}"),
        message: e.to_string(),
    }))
}

/// When a ledger entry was recorded, read from its body alone.
fn recorded_at(sk: &str, body: &str) -> Result<DateTime<Utc>, StoreError> {
    #[derive(serde::Deserialize)]
    struct Recorded {
        recorded_at: DateTime<Utc>,
    }
    serde_json::from_str::<Recorded>(body)
        .map(|r| r.recorded_at)
        .map_err(|e| StoreError::Corrupt {
            key: format!("entry/{sk}"),
            message: e.to_string(),
        })
}

fn outbox_message(item: &Item) -> Option<Result<OutboxMessage, StoreError>> {
    outbox_message_parts(text(item, "SK")?, text(item, "body")?)
}

#[async_trait]
impl OutboxStore for DynamoStore {
    /// A scan: in AWS the table's stream relays the outbox, and this is the operator's sweep.
    async fn outbox(&self, limit: usize) -> Result<Vec<OutboxMessage>, StoreError> {
        let scan = self
            .client
            .scan()
            .table_name(&self.table)
            .filter_expression("begins_with(SK, :o)")
            .expression_attribute_values(":o", s(OUTBOX_PREFIX))
            .consistent_read(true);
        self.scan_messages(scan, limit, |item| {
            outbox_message(item).map(|message| message.map(|m| vec![m]))
        })
        .await
    }

    /// A scan of the ledger entries that carry messages; the entry's body says when it was
    /// recorded.
    async fn carried(
        &self,
        recorded: std::ops::Range<DateTime<Utc>>,
        limit: usize,
    ) -> Result<Vec<OutboxMessage>, StoreError> {
        let scan = self
            .client
            .scan()
            .table_name(&self.table)
            .filter_expression("begins_with(SK, :l) AND attribute_exists(#c)")
            .expression_attribute_names("#c", CARRIED)
            .expression_attribute_values(":l", s("L#"))
            .consistent_read(true);
        self.scan_messages(scan, limit, |item| {
            let sk = text(item, "SK")?;
            match body_json(item, sk).and_then(|json| recorded_at(sk, &json)) {
                Ok(at) if recorded.contains(&at) => carried_messages(sk, text(item, CARRIED)?),
                Ok(_) => Some(Ok(Vec::new())),
                Err(e) => Some(Err(e)),
            }
        })
        .await
    }

    async fn relayed(&self, message: &OutboxMessage) -> Result<(), StoreError> {
        self.client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(outbox_key(message)))
            .send()
            .await
            .map_err(|e| sdk_error("cannot forget a relayed message", e))?;
        Ok(())
    }

    async fn enqueue(&self, message: &OutboxMessage) -> Result<(), StoreError> {
        self.put_plain(outbox_item(message)?, "cannot write to the outbox")
            .await
    }

    /// An update of the item's `woken` time: the stream shows a MODIFY, which the relay's
    /// filter passes like an INSERT. Rewriting the item unchanged would show nothing.
    async fn wake(&self, message: &OutboxMessage) -> Result<(), StoreError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(outbox_key(message)))
            .update_expression("SET #w = :w")
            .condition_expression("attribute_exists(PK)")
            .expression_attribute_names("#w", "woken")
            .expression_attribute_values(
                ":w",
                s(Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)),
            )
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            // Relayed and forgotten meanwhile.
            Err(e)
                if matches!(
                    e.as_service_error(),
                    Some(UpdateItemError::ConditionalCheckFailedException(_))
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(sdk_error("cannot wake an outbox message", e)),
        }
    }
}

/// The attribute of an order's link that says events were parked for the order.
const AWAITED: &str = "awaited";

/// A link item as a delivery reads it.
fn linked(item: &Item) -> Linked {
    Linked {
        member: text(item, "member").map(str::to_string),
        awaited: item.contains_key(AWAITED),
    }
}

fn parked_pk(program: &str, order_key: &str) -> String {
    format!("P#{program}#ORDER#{order_key}")
}

/// Member ids from the items of a query or scan, and the cursor for the next page.
fn member_page(
    items: &[Item],
    last: Option<&HashMap<String, AttributeValue>>,
) -> Result<MemberPage, StoreError> {
    let members = items
        .iter()
        .filter_map(|item| text(item, "member").map(str::to_string))
        .collect();
    let next_cursor = match last {
        Some(last) => Some(encode_key(last)?),
        None => None,
    };
    Ok(MemberPage {
        members,
        next_cursor,
    })
}

/// A `LastEvaluatedKey` as an opaque cursor (its string attributes as JSON).
fn encode_key(key: &HashMap<String, AttributeValue>) -> Result<String, StoreError> {
    let plain: std::collections::BTreeMap<&str, &str> = key
        .iter()
        .filter_map(|(k, v)| v.as_s().ok().map(|v| (k.as_str(), v.as_str())))
        .collect();
    serde_json::to_string(&plain).map_err(|e| StoreError::failed("cannot encode a cursor", e))
}

fn decode_key(cursor: &str) -> Result<Item, StoreError> {
    let plain: HashMap<String, String> =
        serde_json::from_str(cursor).map_err(|e| StoreError::Corrupt {
            key: "cursor".into(),
            message: e.to_string(),
        })?;
    Ok(plain.into_iter().map(|(k, v)| (k, s(v))).collect())
}

#[async_trait]
impl ScheduleStore for DynamoStore {
    fn due_shards(&self) -> u32 {
        DUE_SHARDS
    }

    async fn due_members(
        &self,
        program: &str,
        job: DueJob,
        date: chrono::NaiveDate,
        shard: u32,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<MemberPage, StoreError> {
        let (attribute, index) = due_index(job);
        let output = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(index)
            .key_condition_expression("#due = :due")
            .expression_attribute_names("#due", attribute)
            .expression_attribute_values(":due", s(due_partition(program, date, shard)))
            .set_exclusive_start_key(cursor.map(decode_key).transpose()?)
            .limit(i32::try_from(limit).unwrap_or(i32::MAX))
            .send()
            .await
            .map_err(|e| sdk_error("cannot read the due-date index", e))?;
        member_page(output.items(), output.last_evaluated_key())
    }

    /// A full pass over a program's accounts is a filtered scan: it is run rarely (after
    /// thresholds change), and an index of every member would cost a write on every commit.
    async fn members_page(
        &self,
        program: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<MemberPage, StoreError> {
        let mut start = cursor.map(decode_key).transpose()?;
        let mut scanned = 0;
        loop {
            scanned += 1;
            let output = self
                .client
                .scan()
                .table_name(&self.table)
                .filter_expression("SK = :account AND begins_with(PK, :prefix)")
                .expression_attribute_values(":account", s("ACCOUNT"))
                .expression_attribute_values(":prefix", s(format!("P#{program}#M#")))
                .projection_expression("PK, SK, #member")
                .expression_attribute_names("#member", "member")
                .set_exclusive_start_key(start.take())
                .limit(i32::try_from(limit).unwrap_or(i32::MAX))
                .send()
                .await
                .map_err(|e| sdk_error("cannot scan the accounts", e))?;
            let page = member_page(output.items(), output.last_evaluated_key())?;
            // A scan page can be all filtered out (other programs' items, ledger entries): go
            // on until members or the end, but for a bounded number of requests, so that the
            // caller saves its cursor and looks at its deadline in a table mostly of others.
            match (&page.next_cursor, page.members.is_empty()) {
                (Some(next), true) if scanned < EMPTY_SCAN_PAGES => start = Some(decode_key(next)?),
                _ => return Ok(page),
            }
        }
    }

    async fn program_ids(&self) -> Result<Vec<String>, StoreError> {
        let mut ids = Vec::new();
        let mut start = None;
        loop {
            let output = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("PK = :pk")
                .expression_attribute_values(":pk", s(PROGRAMS_PK))
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| sdk_error("cannot list programs", e))?;
            ids.extend(
                output
                    .items()
                    .iter()
                    .filter_map(|i| text(i, "SK").map(str::to_string)),
            );
            match output.last_evaluated_key {
                Some(last) => start = Some(last),
                None => return Ok(ids),
            }
        }
    }

    async fn job_progress(&self, program: &str, job: &str) -> Result<Option<String>, StoreError> {
        let item = self
            .get(key(format!("P#{program}"), format!("JOB#{job}")))
            .await?;
        Ok(item.and_then(|i| text(&i, "progress").map(str::to_string)))
    }

    async fn save_job_progress(
        &self,
        program: &str,
        job: &str,
        progress: Option<&str>,
    ) -> Result<(), StoreError> {
        let item_key = key(format!("P#{program}"), format!("JOB#{job}"));
        let result = match progress {
            Some(p) => {
                let mut item = item_key;
                item.insert("progress".into(), s(p));
                self.client
                    .put_item()
                    .table_name(&self.table)
                    .set_item(Some(item))
                    .send()
                    .await
                    .map(|_| ())
                    .map_err(|e| sdk_error("cannot save the job's progress", e))
            }
            None => self
                .client
                .delete_item()
                .table_name(&self.table)
                .set_key(Some(item_key))
                .send()
                .await
                .map(|_| ())
                .map_err(|e| sdk_error("cannot save the job's progress", e)),
        };
        result
    }
}

/// Where a scanned item belongs.
enum Place {
    Member { program: String, member: String },
    Parked(ParkedEvent),
    Other,
}

fn place(item: &Item) -> Place {
    let (Some(pk), Some(sk)) = (text(item, "PK"), text(item, "SK")) else {
        return Place::Other;
    };
    let Some(rest) = pk.strip_prefix("P#") else {
        return Place::Other;
    };
    // Program ids never hold `#`, so the first `#` ends the program.
    let Some((program, rest)) = rest.split_once('#') else {
        return Place::Other;
    };
    if let Some(member) = rest.strip_prefix("M#") {
        return Place::Member {
            program: program.to_string(),
            member: member.to_string(),
        };
    }
    match (rest.strip_prefix("ORDER#"), sk.strip_prefix("PARKED#")) {
        (Some(order_key), Some(event_id)) => Place::Parked(ParkedEvent {
            program: program.to_string(),
            order_key: order_key.to_string(),
            event_id: event_id.to_string(),
            body: text(item, "body").unwrap_or_default().to_string(),
        }),
        _ => Place::Other,
    }
}

/// A partition that holds only messages waiting to be relayed is no member.
fn has_records(records: &MemberRecords) -> bool {
    records.account.is_some() || !records.entries.is_empty() || !records.orders.is_empty()
}

/// Hands the member walked so far to `visit`: its records, or, when one of its items could
/// not be read, its name and why.
fn flush(
    current: &mut Option<MemberRecords>,
    broken: &mut Option<String>,
    visit: &(dyn Fn(Walked) + Send + Sync),
) {
    let (Some(done), broken) = (current.take(), broken.take()) else {
        return;
    };
    match broken {
        Some(detail) => visit(Walked::Unreadable {
            program: done.program,
            member: done.member,
            detail,
        }),
        None if has_records(&done) => visit(Walked::Member(Box::new(done))),
        None => {}
    }
}

/// Adds one item of a member's partition to what is known of the member.
fn gather(records: &mut MemberRecords, item: &Item) -> Result<(), StoreError> {
    let sk = text(item, "SK").unwrap_or_default();
    if sk == "ACCOUNT" {
        records.account = Some(body(item, sk)?);
    } else if sk.starts_with("L#") {
        records.entries.push(body(item, sk)?);
    } else if sk.starts_with("O#") {
        records.orders.push(body(item, sk)?);
    }
    Ok(())
}

#[async_trait]
impl RecordsStore for DynamoStore {
    fn parts(&self) -> u32 {
        self.parts
    }

    /// One parallel-scan segment. A partition's items come together and in key order within a
    /// segment, so a member is whole when the next partition starts.
    async fn walk(
        &self,
        part: u32,
        program: Option<&str>,
        visit: &(dyn Fn(Walked) + Send + Sync),
    ) -> Result<(), StoreError> {
        let mut start = None;
        let mut current: Option<MemberRecords> = None;
        let mut broken: Option<String> = None;
        loop {
            let mut scan = self
                .client
                .scan()
                .table_name(&self.table)
                .segment(i32::try_from(part).unwrap_or(0))
                .total_segments(i32::try_from(self.parts).unwrap_or(1))
                .return_consumed_capacity(aws_sdk_dynamodb::types::ReturnConsumedCapacity::Total)
                .set_exclusive_start_key(start.take());
            if let Some(program) = program {
                scan = scan
                    .filter_expression("begins_with(PK, :p)")
                    .expression_attribute_values(":p", s(format!("P#{program}#")));
            }
            let output = scan
                .send()
                .await
                .map_err(|e| sdk_error("cannot scan the table", e))?;
            self.count_read(output.consumed_capacity());
            for item in output.items() {
                match place(item) {
                    Place::Member { program, member } => {
                        let same = current
                            .as_ref()
                            .is_some_and(|c| c.program == program && c.member == member);
                        if !same {
                            flush(&mut current, &mut broken, visit);
                            current = Some(MemberRecords {
                                program,
                                member,
                                ..MemberRecords::default()
                            });
                        }
                        // An item that cannot be read makes its member unreadable (named, its
                        // partial records not checked); the walk goes on.
                        if let Some(records) = current.as_mut() {
                            if let Err(e) = gather(records, item) {
                                broken.get_or_insert(e.to_string());
                            }
                        }
                    }
                    Place::Parked(event) => visit(Walked::Parked(event)),
                    Place::Other => {}
                }
            }
            start = output.last_evaluated_key;
            if start.is_none() {
                break;
            }
        }
        flush(&mut current, &mut broken, visit);
        Ok(())
    }

    fn read_units(&self) -> Option<f64> {
        Some(self.read_milli_units.load(Ordering::Relaxed) as f64 / 1000.0)
    }

    async fn member_records(
        &self,
        program: &str,
        member: &str,
    ) -> Result<MemberRecords, StoreError> {
        let mut records = MemberRecords {
            program: program.to_string(),
            member: member.to_string(),
            ..MemberRecords::default()
        };
        for item in self.partition(&member_pk(program, member), "").await? {
            gather(&mut records, &item)?;
        }
        Ok(records)
    }

    async fn member_file(&self, program: &str, member: &str) -> Result<MemberFile, StoreError> {
        let pk = member_pk(program, member);
        let mut file = MemberFile::default();
        for prefix in ["O#", "R#", "A#", "I#"] {
            for item in self.partition(&pk, prefix).await? {
                let sk = text(&item, "SK").unwrap_or_default();
                match prefix {
                    "O#" => file
                        .orders
                        .push((sk.trim_start_matches("O#").to_string(), body(&item, sk)?)),
                    "R#" => file.redemptions.push(body(&item, sk)?),
                    "A#" => file.assignments.push(body(&item, sk)?),
                    // An identity moved to another member by a merge is no longer this one's.
                    _ if item.contains_key("moved_to") => {}
                    _ => {
                        if let Some((kind, value)) = sk.trim_start_matches("I#").split_once('#') {
                            file.aliases.push((kind.to_string(), value.to_string()));
                        }
                    }
                }
            }
        }
        for code in file
            .redemptions
            .iter()
            .filter_map(|r| r.code.clone())
            .collect::<Vec<_>>()
        {
            if let Some(coupon) = self.coupon(program, &code).await? {
                file.coupons.push(coupon);
            }
        }
        Ok(file)
    }
}

impl DynamoStore {
    /// Every item of a partition whose sort key starts with `prefix`, consistently read.
    async fn partition(&self, pk: &str, prefix: &str) -> Result<Vec<Item>, StoreError> {
        let mut items = Vec::new();
        let mut start = None;
        loop {
            let mut query = self
                .client
                .query()
                .table_name(&self.table)
                .expression_attribute_values(":pk", s(pk));
            query = if prefix.is_empty() {
                query.key_condition_expression("PK = :pk")
            } else {
                query
                    .key_condition_expression("PK = :pk AND begins_with(SK, :prefix)")
                    .expression_attribute_values(":prefix", s(prefix))
            };
            let output = query
                .set_exclusive_start_key(start.take())
                .consistent_read(true)
                .send()
                .await
                .map_err(|e| sdk_error("cannot read the member's items", e))?;
            items.extend(output.items.unwrap_or_default());
            start = output.last_evaluated_key;
            if start.is_none() {
                return Ok(items);
            }
        }
    }
}

fn audit_key(program: &str, id: &str) -> Item {
    key(format!("P#{program}#AUDIT"), format!("A#{id}"))
}

#[async_trait]
impl AuditStore for DynamoStore {
    async fn request_audit(
        &self,
        program: &str,
        run: &AuditRun,
        message: &OutboxMessage,
    ) -> Result<(), StoreError> {
        let mut item = audit_key(program, &run.id);
        item.insert("body".into(), encode("audit", run)?);
        // (a request whose message never runs is not kept for ever either)
        item.insert("expires_at".into(), n(run.kept_until().timestamp()));
        let audit = self.put(item, Some("attribute_not_exists(PK)"), None)?;
        let outbox = self.put(outbox_item(message)?, None, None)?;
        self.client
            .transact_write_items()
            .transact_items(audit)
            .transact_items(outbox)
            .send()
            .await
            .map_err(|e| sdk_error("cannot request the audit", e))?;
        Ok(())
    }

    async fn audit_run(&self, program: &str, id: &str) -> Result<Option<AuditRun>, StoreError> {
        self.get(audit_key(program, id))
            .await?
            .map(|item| body(&item, "audit"))
            .transpose()
    }

    async fn save_audit_run(&self, program: &str, run: &AuditRun) -> Result<(), StoreError> {
        let mut item = audit_key(program, &run.id);
        item.insert("body".into(), encode("audit", run)?);
        item.insert("expires_at".into(), n(run.kept_until().timestamp()));
        self.put_plain(item, "cannot save the audit").await
    }
}

/// BatchGetItem requests for one read before the keys still unprocessed fail it (worth
/// retrying), and the first pause between them: at most 10 + 20 + ... + 640 ms in all.
const UNPROCESSED_ATTEMPTS: u32 = 8;
const UNPROCESSED_PAUSE: std::time::Duration = std::time::Duration::from_millis(10);

/// How many deletes one BatchWriteItem takes.
const BATCH_WRITE: usize = 25;

/// How many times an erasure deletes what a write that landed meanwhile added, before it asks
/// to be run again.
const ERASURE_SWEEPS: usize = 3;

/// Identities linked in one transaction at most (2 items each; a transaction takes 100).
const MAX_ALIASES_TOGETHER: usize = 25;

impl DynamoStore {
    /// The two items of an identity's link: the link, written unless it leads to another
    /// member, and the member's side of it, so that an export finds the member's identities.
    fn alias_items(
        &self,
        program: &str,
        kind: &str,
        value: &str,
        member: &str,
    ) -> Result<[TransactWriteItem; 2], StoreError> {
        let mut item = alias_key(program, kind, value);
        item.insert("member".into(), s(member));
        let alias = build(
            "alias",
            Put::builder()
                .table_name(&self.table)
                .set_item(Some(item))
                .condition_expression("attribute_not_exists(PK) OR #m = :m")
                .expression_attribute_names("#m", "member")
                .expression_attribute_values(":m", s(member))
                .build(),
        )?;
        let mine = self.put(
            key(member_pk(program, member), format!("I#{kind}#{value}")),
            None,
            None,
        )?;
        Ok([TransactWriteItem::builder().put(alias).build(), mine])
    }

    /// Deletes every item of the member's and the items that lead to it; the account last, on
    /// the version this sweep read. `false`: the account changed meanwhile (a write that landed
    /// after the read), so another sweep must find what that write added.
    async fn sweep_member(
        &self,
        program: &str,
        member: &str,
        coupons: &[String],
    ) -> Result<bool, StoreError> {
        let items = self.partition(&member_pk(program, member), "").await?;
        // The coupons first, in requests of their own: the redemptions that name them are how a
        // run again finds them.
        let mut codes: Vec<String> = coupons.to_vec();
        for item in &items {
            let sk = text(item, "SK").unwrap_or_default();
            if sk.starts_with("R#") {
                codes.extend(body::<crate::ports::Redemption>(item, sk)?.code);
            }
        }
        codes.sort();
        codes.dedup();
        self.delete_all(codes.iter().map(|code| coupon_key(program, code)).collect())
            .await?;
        // The identities next: while they stand, they still lead to the member.
        for item in items.iter().filter(|i| !i.contains_key("moved_to")) {
            let sk = text(item, "SK").unwrap_or_default();
            if let Some((kind, value)) = sk.strip_prefix("I#").and_then(|i| i.split_once('#')) {
                self.remove_alias(program, kind, value, member).await?;
            }
        }
        self.delete_all(self.order_links(program, member).await?)
            .await?;
        let (accounts, keys): (Vec<&Item>, Vec<&Item>) = items
            .iter()
            .partition(|item| text(item, "SK") == Some("ACCOUNT"));
        self.delete_all(keys.into_iter().filter_map(key_of).collect())
            .await?;
        // The account last, in a request of its own: an erasure interrupted before it is found
        // again from the account's erasure mark and finished; none leaves items without it.
        match accounts.first() {
            Some(account) => self.delete_account_at(account).await,
            None => Ok(true),
        }
    }

    /// Deletes the account item if it is still at the version read; `false` if it is not.
    async fn delete_account_at(&self, account: &Item) -> Result<bool, StoreError> {
        use aws_sdk_dynamodb::operation::delete_item::DeleteItemError;
        let version = account.get("version").cloned().unwrap_or_else(|| n(0));
        let result = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(key_of(account))
            .condition_expression("version = :v")
            .expression_attribute_values(":v", version)
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(e)
                if matches!(
                    e.as_service_error(),
                    Some(DeleteItemError::ConditionalCheckFailedException(_))
                ) =>
            {
                Ok(false)
            }
            Err(e) => Err(sdk_error("cannot delete the account", e)),
        }
    }

    /// Deletes items by key, 25 at a time, until DynamoDB has processed every one.
    async fn delete_all(&self, keys: Vec<Item>) -> Result<(), StoreError> {
        use aws_sdk_dynamodb::types::{DeleteRequest, WriteRequest};
        let mut waiting: Vec<WriteRequest> = Vec::with_capacity(keys.len());
        for key in keys {
            let request = build(
                "delete",
                DeleteRequest::builder().set_key(Some(key)).build(),
            )?;
            waiting.push(WriteRequest::builder().delete_request(request).build());
        }
        let mut pause = std::time::Duration::from_millis(50);
        while !waiting.is_empty() {
            let rest = waiting.split_off(waiting.len().min(BATCH_WRITE));
            let batch = std::mem::replace(&mut waiting, rest);
            let output = self
                .client
                .batch_write_item()
                .request_items(&self.table, batch)
                .send()
                .await
                .map_err(|e| sdk_error("cannot delete the items", e))?;
            let unprocessed = output
                .unprocessed_items
                .and_then(|mut m| m.remove(&self.table))
                .unwrap_or_default();
            if !unprocessed.is_empty() {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_secs(2));
                waiting.extend(unprocessed);
            }
        }
        Ok(())
    }
}

#[async_trait]
impl ErasureStore for DynamoStore {
    async fn erase_member(
        &self,
        program: &str,
        member: &str,
        coupons: &[String],
    ) -> Result<(), StoreError> {
        for _ in 0..ERASURE_SWEEPS {
            if self.sweep_member(program, member, coupons).await? {
                return Ok(());
            }
        }
        // (No member id: it may be an email, and this error is logged.)
        Err(StoreError::Transient {
            message: "the member kept changing while its items were deleted; run the erasure again"
                .into(),
            source: None,
        })
    }

    async fn rejected_naming(
        &self,
        program: &str,
        needles: &[String],
    ) -> Result<Vec<RejectedEvent>, StoreError> {
        let mut found: BTreeMap<String, RejectedEvent> = BTreeMap::new();
        for names in needles.chunks(FORGET_PER_SCAN) {
            let scan = self.payload_scan(forget_filter(program, names, &[])?);
            for item in scan_all(scan, "cannot find the rejected events naming a member").await? {
                if text(&item, "SK") == Some("R") {
                    let event = rejected_of(&item)?;
                    found.insert(event.event_id.clone(), event);
                }
            }
        }
        Ok(found.into_values().collect())
    }

    async fn forget_payloads(
        &self,
        program: &str,
        needles: &[String],
        principals: &[String],
    ) -> Result<Forgotten, StoreError> {
        // A scan of the program's parked and rejected events and of its idempotency records:
        // erasures are rare, and these are kept by order, by day and by caller, never by member.
        // One scan for both; a filter holds at most 4 KB, so many names take several.
        let rounds = needles
            .len()
            .div_ceil(FORGET_PER_SCAN)
            .max(principals.len().div_ceil(FORGET_PER_SCAN));
        let chunk = |names: &[String], round: usize| -> Vec<String> {
            names
                .iter()
                .skip(round * FORGET_PER_SCAN)
                .take(FORGET_PER_SCAN)
                .cloned()
                .collect()
        };
        let mut keys: BTreeMap<(String, String), Item> = BTreeMap::new();
        for round in 0..rounds {
            let (needles, principals) = (chunk(needles, round), chunk(principals, round));
            let scan = self.payload_scan(forget_filter(program, &needles, &principals)?);
            let found = scan_all(scan, "cannot find the events to forget").await?;
            for item in &found {
                let (Some(pk), Some(sk)) = (text(item, "PK"), text(item, "SK")) else {
                    continue;
                };
                keys.insert((pk.to_string(), sk.to_string()), key(pk, sk));
                // A rejected event is listed under its day too.
                if let (Some(lp), Some(ls)) = (text(item, "list_pk"), text(item, "list_sk")) {
                    keys.insert((lp.to_string(), ls.to_string()), key(lp, ls));
                }
            }
        }
        let forgotten = Forgotten {
            events: keys
                .keys()
                .filter(|(_, sk)| sk.starts_with("PARKED#") || sk == "R")
                .count(),
            requests: keys.keys().filter(|(_, sk)| sk == IDEMPOTENCY_SK).count(),
        };
        self.delete_all(keys.into_values().collect()).await?;
        Ok(forgotten)
    }

    async fn referees(&self, program: &str, referrer: &str) -> Result<Vec<String>, StoreError> {
        let scan = self
            .client
            .scan()
            .table_name(&self.table)
            .filter_expression("begins_with(PK, :p) AND SK = :account AND #ref = :referrer")
            .expression_attribute_names("#ref", REFERRER)
            .expression_attribute_values(":p", s(format!("P#{program}#M#")))
            .expression_attribute_values(":account", s("ACCOUNT"))
            .expression_attribute_values(":referrer", s(referrer))
            .projection_expression("#m")
            .expression_attribute_names("#m", "member")
            .consistent_read(true);
        let found = scan_all(scan, "cannot find the members referred").await?;
        Ok(found
            .iter()
            .filter_map(|item| text(item, "member").map(str::to_string))
            .collect())
    }

    /// One item per name (`P#{program}#ERASED#{digest}`), its time in milliseconds; a write
    /// whose condition finds a later time there leaves it.
    async fn note_erased(
        &self,
        program: &str,
        digests: &[String],
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let at = at.timestamp_millis();
        // A member's orders are among its names: a few at a time, not hundreds at once.
        for chunk in digests.chunks(16) {
            futures_util::future::try_join_all(chunk.iter().map(|digest| async move {
                let mut item = erased_key(program, digest);
                item.insert(ERASED_AT.into(), n(at));
                let result = self
                    .client
                    .put_item()
                    .table_name(&self.table)
                    .set_item(Some(item))
                    .condition_expression("attribute_not_exists(PK) OR #at < :at")
                    .expression_attribute_names("#at", ERASED_AT)
                    .expression_attribute_values(":at", n(at))
                    .send()
                    .await;
                put_written(result, "cannot remember the erasure").map(|_| ())
            }))
            .await?;
        }
        Ok(())
    }

    async fn erased_at(
        &self,
        program: &str,
        digests: &[String],
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        let keys = digests.iter().map(|d| erased_key(program, d)).collect();
        let found = self
            .batch_read(keys, true, "cannot read the erasures")
            .await?;
        let latest = found
            .iter()
            .filter_map(|item| item.get(ERASED_AT)?.as_n().ok()?.parse::<i64>().ok())
            .max();
        Ok(latest.and_then(DateTime::from_timestamp_millis))
    }
}

/// The attribute of an erasure's record that holds its time (milliseconds since the epoch).
const ERASED_AT: &str = "erased_at";

/// The key of the record that a name was erased ([`ErasureStore::note_erased`]).
fn erased_key(program: &str, digest: &str) -> Item {
    key(format!("P#{program}#ERASED#{digest}"), "ERASED")
}

/// Every item a filtered scan finds, page after page (erasures: rare, and never on a hot path).
async fn scan_all(
    scan: aws_sdk_dynamodb::operation::scan::builders::ScanFluentBuilder,
    what: &str,
) -> Result<Vec<Item>, StoreError> {
    let mut found = Vec::new();
    let mut start = None;
    loop {
        let output = scan
            .clone()
            .set_exclusive_start_key(start.take())
            .send()
            .await
            .map_err(|e| sdk_error(what, e))?;
        found.extend(output.items.unwrap_or_default());
        start = output.last_evaluated_key;
        if start.is_none() {
            return Ok(found);
        }
    }
}

/// The account attribute that names the member who referred it (`Account::referred_by`).
const REFERRER: &str = "referrer";

/// Names (or principals) per scan of an erasure: each adds about 70 characters to the filter.
const FORGET_PER_SCAN: usize = 20;

/// The filter of one scan of [`ErasureStore::forget_payloads`]: parked and rejected events
/// that hold one of `needles` as a whole JSON string, or idempotency records of one of
/// `principals`; with its values.
fn forget_filter(
    program: &str,
    needles: &[String],
    principals: &[String],
) -> Result<(String, HashMap<String, AttributeValue>), StoreError> {
    let mut values = HashMap::new();
    let mut clauses = Vec::new();
    if !needles.is_empty() {
        values.insert(":parked".to_string(), s(format!("P#{program}#ORDER#")));
        values.insert(
            ":rejected".to_string(),
            s(format!("P#{program}#REJECTED#E#")),
        );
        values.insert(":r".to_string(), s("R"));
        let mut held = Vec::new();
        for (i, needle) in needles.iter().enumerate() {
            held.push(format!("contains(#b, :raw{i}) OR contains(#b, :esc{i})"));
            values.insert(format!(":raw{i}"), s(format!("\"{needle}\"")));
            values.insert(format!(":esc{i}"), s(format!("\\\"{needle}\\\"")));
        }
        clauses.push(format!(
            "((begins_with(PK, :parked) OR (begins_with(PK, :rejected) AND SK = :r)) AND ({}))",
            held.join(" OR ")
        ));
    }
    if !principals.is_empty() {
        values.insert(":idemp".to_string(), s(IDEMPOTENCY_SK));
    }
    for (i, principal) in principals.iter().enumerate() {
        // The key's prefix finds the caller's records, and those of any caller whose subject
        // starts with this one and a `#`; the body's first field tells them apart.
        let first_field = serde_json::to_string(principal)
            .map(|p| format!("{{\"principal\":{p},"))
            .map_err(|e| StoreError::failed("cannot encode a principal", e))?;
        clauses.push(format!(
            "(begins_with(PK, :k{i}) AND SK = :idemp AND begins_with(#b, :p{i}))"
        ));
        values.insert(format!(":k{i}"), s(idempotency_prefix(program, principal)));
        values.insert(format!(":p{i}"), s(first_field));
    }
    Ok((clauses.join(" OR "), values))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_single_table_layout() {
        assert_eq!(member_pk("kr-shop", "m-1"), "P#kr-shop#M#m-1");
        let marker = EventMarker {
            source: "shopify".into(),
            event_id: "abc".into(),
        };
        assert_eq!(marker_sk(&marker), "E#shopify#abc");
        // Ledger sort keys compare as numbers.
        let a = format!("L#{}", seq_key(ledger_seq(9, 3)));
        let b = format!("L#{}", seq_key(ledger_seq(10, 0)));
        assert!(a < b);
        assert!(b.as_str() < "L#~");
    }

    #[test]
    fn a_throttled_or_invalid_commit_is_no_version_conflict() {
        let reasons = |codes: &[&str]| -> Vec<Option<String>> {
            codes
                .iter()
                .map(|c| (*c != "None").then(|| c.to_string()))
                .collect()
        };
        // GIVEN cancellations whose reasons are a throttle, or an item the table refuses
        // WHEN they are told apart THEN the first is transient, the second unfit for good
        assert!(matches!(
            not_a_conflict(&reasons(&["None", "ThrottlingError"])),
            Some(CommitError::Store(StoreError::Transient { .. }))
        ));
        assert!(matches!(
            not_a_conflict(&reasons(&["ProvisionedThroughputExceeded"])),
            Some(CommitError::Store(StoreError::Transient { .. }))
        ));
        assert!(matches!(
            not_a_conflict(&reasons(&["ValidationError", "None"])),
            Some(CommitError::Store(StoreError::Unfit { .. }))
        ));
        assert!(matches!(
            not_a_conflict(&reasons(&["None", "ItemSizeTooLarge"])),
            Some(CommitError::Store(StoreError::Unfit { .. }))
        ));
        // AND a failed condition or a conflict is left to the version and marker checks
        assert!(not_a_conflict(&reasons(&["ConditionalCheckFailed", "None"])).is_none());
        assert!(not_a_conflict(&reasons(&["None", "TransactionConflict"])).is_none());
        assert!(not_a_conflict(&[]).is_none());
    }

    #[test]
    fn a_link_or_save_met_by_a_throttle_is_transient_not_refused() {
        // GIVEN a link's transaction cancelled by a throttle or another writer
        // WHEN its reasons are read THEN a later try goes through
        assert!(cancelled_for_now(&[Some("None"), Some("ThrottlingError")]));
        assert!(cancelled_for_now(&[Some("TransactionConflict")]));
        // AND a failed condition or an item refused for good is not
        assert!(!cancelled_for_now(&[Some("ConditionalCheckFailed")]));
        assert!(!cancelled_for_now(&[Some("ValidationError"), Some("None")]));
        // AND a program save met by a throttle on its current version is no conflict
        assert!(!first_condition_failed(&[Some("ThrottlingError"), None]));
    }

    #[test]
    fn a_replay_is_taken_for_done_only_when_its_record_failed_its_condition() {
        // GIVEN a replay's transaction (the record first, then the outbox) cancelled
        // WHEN its record failed its condition, or moto named no reason THEN it was replayed
        assert!(first_condition_failed(&[
            Some("ConditionalCheckFailed"),
            Some("None")
        ]));
        assert!(first_condition_failed(&[]));
        // AND a throttle or a conflict with another writer is not
        assert!(!first_condition_failed(&[
            Some("None"),
            Some("ThrottlingError")
        ]));
        assert!(!first_condition_failed(&[
            Some("TransactionConflict"),
            Some("None")
        ]));
    }
}
