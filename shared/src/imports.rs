//! Balance files exported by other loyalty programmes, read into rows.
//!
//! Each format is read by its column names (any case, spaces or underscores), so an export
//! with extra columns still reads; a column the format needs and the file lacks stops the
//! whole file, while a bad cell refuses only its row.
//!
//! | format        | member                    | points                      | also read                          |
//! |---------------|---------------------------|-----------------------------|------------------------------------|
//! | `smile`       | `email`                   | `points`                    |                                    |
//! | `loyaltylion` | `email` / `customer email`| `points`                    |                                    |
//! | `yotpo`       | `email`                   | `points balance` (empty: 0) | `birthday` (MM/DD or MM/DD/YYYY)   |
//! | `csv` (ours)  | `member` and/or `email`   | `points`                    | `tier`, `birthday` (MM-DD or YYYY-MM-DD), `expires_on` (YYYY-MM-DD) |

use sha2::{Digest, Sha256};

use crate::domain::import::ImportedBalance;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BalanceFormat {
    Smile,
    LoyaltyLion,
    Yotpo,
    Csv,
}

impl BalanceFormat {
    pub fn parse(name: &str) -> Option<BalanceFormat> {
        match name {
            "smile" => Some(BalanceFormat::Smile),
            "loyaltylion" => Some(BalanceFormat::LoyaltyLion),
            "yotpo" => Some(BalanceFormat::Yotpo),
            "csv" => Some(BalanceFormat::Csv),
            _ => None,
        }
    }
}

/// One row of a balance file, as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BalanceRow {
    /// The row's line in the file (the header is line 1).
    pub line: u64,
    /// The cells as written, for the error file.
    pub cells: Vec<String>,
    /// What the row says, or why it cannot be read.
    pub read: Result<RowData, String>,
    /// What makes the row's id: a digest of what it says and how many rows before it in the
    /// file say the same, so that the file saved again (other line endings, quotes, columns,
    /// rows in between), exported again or the row's error file finds the row imported before.
    pub content: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowData {
    pub member: Option<String>,
    /// Lower-cased.
    pub email: Option<String>,
    /// The member cell as written when it named the member by an email in another case
    /// (`email:Ann@Example.com`): a file imported before such cells were read as emails made a
    /// member of that id, whose marker says the row was applied.
    pub named_as: Option<String>,
    pub balance: ImportedBalance,
}

/// A balance file read whole: its header, its rows and a digest of its bytes (what made each
/// row's id before rows were known by their content; still looked for, see `BalanceRow`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BalanceFile {
    pub header: Vec<String>,
    pub rows: Vec<BalanceRow>,
    pub digest: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FileError(pub String);

/// A CSV reader as exports need: rows of any length, cells trimmed.
fn reader(bytes: &[u8]) -> csv::Reader<&[u8]> {
    csv::ReaderBuilder::new()
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(bytes)
}

fn normalise(name: &str) -> String {
    name.trim()
        .trim_start_matches('\u{feff}')
        .to_lowercase()
        .replace(['_', '-'], " ")
}

struct Columns {
    member: Option<usize>,
    email: Option<usize>,
    points: Option<usize>,
    tier: Option<usize>,
    birthday: Option<usize>,
    expires_on: Option<usize>,
}

impl Columns {
    /// The columns a row is read from.
    fn used(&self) -> impl Iterator<Item = usize> {
        [
            self.member,
            self.email,
            self.points,
            self.tier,
            self.birthday,
            self.expires_on,
        ]
        .into_iter()
        .flatten()
    }
}

fn find(header: &[String], names: &[&str]) -> Option<usize> {
    header.iter().position(|h| {
        names.contains(&h.as_str()) || names.iter().any(|n| h.starts_with(&format!("{n} (")))
    })
}

fn columns(format: BalanceFormat, header: &[String]) -> Result<Columns, FileError> {
    let email = find(header, &["email", "customer email", "email address"]);
    let c = match format {
        BalanceFormat::Smile | BalanceFormat::LoyaltyLion => Columns {
            member: None,
            email,
            points: find(header, &["points"]),
            tier: None,
            birthday: None,
            expires_on: None,
        },
        BalanceFormat::Yotpo => Columns {
            member: None,
            email,
            points: find(header, &["points balance", "points"]),
            tier: None,
            birthday: find(header, &["birthday"]),
            expires_on: None,
        },
        BalanceFormat::Csv => Columns {
            member: find(header, &["member"]),
            email,
            points: find(header, &["points"]),
            tier: find(header, &["tier"]),
            birthday: find(header, &["birthday"]),
            expires_on: find(header, &["expires on", "expiry date"]),
        },
    };
    if c.member.is_none() && c.email.is_none() {
        return Err(FileError(match format {
            BalanceFormat::Csv => "the file has neither a member nor an email column".into(),
            _ => "the file has no email column".into(),
        }));
    }
    if c.points.is_none() && format != BalanceFormat::Yotpo {
        return Err(FileError("the file has no points column".into()));
    }
    Ok(c)
}

/// A cell that is not UTF-8 text, or holds U+FFFD: what an earlier error file wrote for a byte
/// it could not read, which read back would name another email than the one the shop exported.
fn not_utf8(cell: &[u8]) -> bool {
    std::str::from_utf8(cell).map_or(true, |text| text.contains('\u{fffd}'))
}

/// The line a record starts on (the header is line 1), counted from its byte offset: the
/// reader's own line count, and its offset, end a CRLF line late, and numbered every row of a file saved on
/// Windows one too low (the first row as the header's line). Records come in order, so each
/// count goes on from the last.
struct Lines<'a> {
    bytes: &'a [u8],
    offset: usize,
    line: u64,
}

impl<'a> Lines<'a> {
    fn of(bytes: &'a [u8]) -> Lines<'a> {
        Lines {
            bytes,
            offset: 0,
            line: 1,
        }
    }

    fn at(&mut self, record: &csv::ByteRecord) -> u64 {
        let mut start = record
            .position()
            .and_then(|p| usize::try_from(p.byte()).ok())
            .unwrap_or(self.offset)
            .clamp(self.offset, self.bytes.len());
        // After a CRLF the reader's offset is the LF's: the record starts past it (no record
        // starts with a line ending; a quoted cell's starts with its quote).
        while self
            .bytes
            .get(start)
            .is_some_and(|b| *b == b'\n' || *b == b'\r')
        {
            start += 1;
        }
        let newlines = self.bytes[self.offset..start]
            .iter()
            .filter(|&&b| b == b'\n')
            .count();
        self.line += u64::try_from(newlines).unwrap_or(0);
        self.offset = start;
        self.line
    }
}

/// Reads a whole balance file. A file whose header lacks what the format needs is refused;
/// a row with a bad cell is kept with its reason.
pub fn read_balances(format: BalanceFormat, bytes: &[u8]) -> Result<BalanceFile, FileError> {
    let digest = hex16(bytes);
    let mut reader = reader(bytes);
    // Read as bytes: a cell that is not UTF-8 (a file saved as CP949 or Windows-1252) refuses
    // its row when the row needs it, never the whole file.
    let header: Vec<String> = reader
        .byte_headers()
        .map_err(|e| FileError(format!("the header cannot be read: {e}")))?
        .iter()
        .map(|h| String::from_utf8_lossy(h).into_owned())
        .collect();
    let names: Vec<String> = header.iter().map(|h| normalise(h)).collect();
    let columns = columns(format, &names)?;
    let mut rows = Vec::new();
    let mut lines = Lines::of(bytes);
    for record in reader.byte_records() {
        let record = record.map_err(|e| FileError(format!("the file is not CSV: {e}")))?;
        let line = lines.at(&record);
        let cells: Vec<String> = record
            .iter()
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect();
        if cells.iter().all(|c| c.is_empty()) {
            continue;
        }
        let not_text = columns
            .used()
            .find(|&i| record.get(i).is_some_and(not_utf8));
        let read = match not_text {
            Some(i) => Err(format!(
                "the {} cell is not UTF-8 text: save the file as CSV UTF-8 and import it again",
                header.get(i).map_or("", |h| h.trim())
            )),
            None => row(format, &columns, &cells),
        };
        rows.push(BalanceRow {
            line,
            cells,
            read,
            content: String::new(),
        });
    }
    name_by_content(&mut rows);
    // An error file names each row as the file it came from did: a second of two identical
    // rows keeps its rank there, and is not taken for the first.
    if let Some(at) = names.iter().position(|n| n == ERROR_FILE_ROW_ID) {
        for row in &mut rows {
            let given = row.cells.get(at).map(|c| c.trim());
            if let Some(id) =
                given.filter(|id| id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()))
            {
                row.content = id.to_ascii_lowercase();
            }
        }
    }
    Ok(BalanceFile {
        header,
        rows,
        digest,
    })
}

fn cell(cells: &[String], at: Option<usize>) -> Option<&str> {
    at.and_then(|i| cells.get(i))
        .map(String::as_str)
        .filter(|c| !c.is_empty())
}

fn row(format: BalanceFormat, c: &Columns, cells: &[String]) -> Result<RowData, String> {
    let member = cell(cells, c.member).map(str::to_string);
    if let Some(m) = &member {
        crate::ids::IdKind::Member
            .check(m)
            .map_err(|e| format!("member: {e}"))?;
    }
    let mut email = match cell(cells, c.email) {
        Some(e) => Some(email(e)?),
        None => None,
    };
    // A member named by its email (`email:Ann@Example.com`) is the email's member, found and
    // linked as an email column's would be: webhooks find members by their lower-cased links,
    // never by an account that merely bears the address as its id.
    let mut named_as = None;
    let member = match member.as_deref().map(|m| (m, m.strip_prefix("email:"))) {
        Some((cell, Some(named))) => {
            let named = self::email(named)?;
            if email.as_ref().is_some_and(|e| *e != named) {
                return Err(format!(
                    "the member is email {named}, the email column says {}",
                    email.unwrap_or_default()
                ));
            }
            if cell != format!("email:{named}") {
                named_as = Some(cell.to_string());
            }
            email = Some(named);
            None
        }
        _ => member,
    };
    if member.is_none() && email.is_none() {
        return Err(match format {
            BalanceFormat::Csv => "neither a member nor an email is given".into(),
            _ => "the email is empty".into(),
        });
    }
    let points = match (cell(cells, c.points), format) {
        (Some(text), _) => Some(points(text)?),
        // A Yotpo export may carry no balance: its members' birthdays come, nothing is set.
        (None, BalanceFormat::Yotpo) => None,
        (None, _) => return Err("the points are empty".into()),
    };
    let birthday = match cell(cells, c.birthday) {
        Some(text) => Some(birthday(text)?),
        None => None,
    };
    let expires_on = match cell(cells, c.expires_on) {
        Some(text) => Some(
            crate::domain::calendar::parse_date(text)
                .ok_or_else(|| format!("expires_on {text:?} is not a date (YYYY-MM-DD)"))?,
        ),
        None => None,
    };
    Ok(RowData {
        member,
        email,
        named_as,
        balance: ImportedBalance {
            points,
            tier: cell(cells, c.tier).map(str::to_string),
            birthday,
            expires_on,
        },
    })
}

/// An email as an alias value: trimmed, lower-cased, one `@` with text on both sides.
pub fn email(text: &str) -> Result<String, String> {
    let e = text.trim().to_lowercase();
    let ok = matches!(e.split_once('@'), Some((user, host)) if !user.is_empty() && host.contains('.') && !host.contains('@'))
        && !e
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == ',' || c == '#');
    if !ok {
        return Err(format!(
            "{:?} is not an email address",
            crate::ids::shorten(text)
        ));
    }
    crate::ids::IdKind::Member
        .check(&e)
        .map_err(|e| format!("email: {e}"))?;
    Ok(e)
}

/// Whole points, with a sign, without separators ("52,620" would silently become 52).
fn points(text: &str) -> Result<i64, String> {
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!(
            "points {text:?} is not a whole number (write 52620, not 52,620 or 52.6)"
        ));
    }
    let value: i64 = text
        .parse()
        .map_err(|_| format!("points {text:?} is out of range"))?;
    crate::domain::limits::check_points("points", value).map_err(|e| e.to_string())?;
    Ok(value)
}

/// A birthday as `MM-DD`, from `MM-DD`, `YYYY-MM-DD`, `MM/DD` or `MM/DD/YYYY`.
fn birthday(text: &str) -> Result<String, String> {
    let parts: Vec<&str> = text.split(['-', '/']).collect();
    let (year, month, day) = match (parts.as_slice(), text.contains('/')) {
        ([m, d], _) => (None, *m, *d),
        ([y, m, d], false) if y.len() == 4 => (Some(*y), *m, *d),
        ([m, d, y], true) if y.len() == 4 => (Some(*y), *m, *d),
        _ => {
            return Err(format!(
                "birthday {text:?} is not MM-DD, YYYY-MM-DD, MM/DD or MM/DD/YYYY"
            ))
        }
    };
    let candidate = format!("{month:0>2}-{day:0>2}");
    let birthday = crate::domain::account::parse_birthday(&candidate).map_err(|e| e.to_string())?;
    // With its year, the date itself must be one (1990-02-29 is no birthday).
    let real = |year: &str| {
        chrono::NaiveDate::parse_from_str(&format!("{year}-{birthday}"), "%Y-%m-%d").is_ok()
    };
    match year {
        Some(year) if !real(year) => Err(format!("birthday {text:?} is not a date")),
        _ => Ok(birthday),
    }
}

/// The column of an error file that keeps each row's content id (as `normalise` reads it).
pub const ERROR_FILE_ROW_ID: &str = "loyalty row id";

/// Gives each row its content id: what it says (its member or email and its balance, as read,
/// not as written) and its rank among the rows that say the same. A row that cannot be read
/// says nothing: its cells make its id (it is refused anyway).
fn name_by_content(rows: &mut [BalanceRow]) {
    let mut seen: std::collections::HashMap<String, u32> = std::collections::HashMap::new();
    for row in rows {
        let says = match &row.read {
            Ok(data) => {
                let b = &data.balance;
                format!(
                    "member={:?} email={:?} points={} tier={:?} birthday={:?} expires_on={:?}",
                    data.member,
                    data.email,
                    b.points.unwrap_or(0),
                    b.tier,
                    b.birthday,
                    b.expires_on
                )
            }
            Err(_) => format!("cells={:?}", row.cells),
        };
        let rank = seen.entry(says.clone()).or_insert(0);
        row.content = hex16(format!("{says} rank={rank}").as_bytes());
        *rank += 1;
    }
}

fn hex16(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn rows_of_an_error_file_keep_the_ids_they_had_in_their_file() {
        // GIVEN a file with one row twice: the second is the same row's second credit
        let file = super::read_balances(
            super::BalanceFormat::Csv,
            b"member,points\nm-1,100\nm-1,100\n",
        )
        .unwrap();
        assert_ne!(file.rows[0].content, file.rows[1].content);
        // WHEN the second alone comes back in an error file, with the id it had
        let errors = format!(
            "line,error,loyalty row id,member,points\n3,busy,{},m-1,100\n",
            file.rows[1].content
        );
        let again = super::read_balances(super::BalanceFormat::Csv, errors.as_bytes()).unwrap();
        // THEN it is that second row, not the first
        assert_eq!(again.rows[0].content, file.rows[1].content);
        // AND a cell that is not an id leaves the row known by what it says
        let odd = b"line,error,loyalty row id,member,points\n3,busy,x,m-1,100\n";
        let odd = super::read_balances(super::BalanceFormat::Csv, odd).unwrap();
        assert_eq!(odd.rows[0].content, file.rows[0].content);
    }

    #[test]
    fn an_order_export_cell_that_is_not_utf8_refuses_its_order_only_when_the_order_reads_it() {
        // GIVEN Shopify's export saved as CP949: a product name (not read) in #1 and an email
        // (read) in #2 are not UTF-8
        let header = b"Name,Email,Financial Status,Paid at,Currency,Lineitem quantity,Lineitem name,Lineitem price,Id\n";
        let mut bytes = header.to_vec();
        bytes.extend_from_slice(
            b"#1,a@b.co,paid,2026-12-01 10:00:00 +0900,KRW,1,\xb0\xa1\xb3\xaa,1000.00,11\n",
        );
        bytes.extend_from_slice(
            b"#2,\xb0\xa1@b.co,paid,2026-12-01 10:00:00 +0900,KRW,1,Mug,1000.00,12\n",
        );
        bytes.extend_from_slice(b"#3,c@d.co,paid,2026-12-01 10:00:00 +0900,KRW,1,Mug,2000.00,13\n");
        // WHEN it is read
        let orders = super::read_shopify_orders(&bytes, crate::domain::Currency::KRW).unwrap();
        // THEN #1 and #3 are read, and #2 alone is refused, saying how to save the file
        assert_eq!(orders.len(), 3);
        assert!(orders[0].read.is_ok(), "{:?}", orders[0].read);
        assert!(orders[2].read.is_ok(), "{:?}", orders[2].read);
        let refused = orders[1].read.as_ref().unwrap_err();
        assert!(
            refused.contains("\"email\"") && refused.contains("CSV UTF-8"),
            "{refused}"
        );
    }

    #[test]
    fn a_cell_that_is_not_utf8_refuses_its_row_only_when_the_row_needs_it() {
        // GIVEN a file saved as Windows-1252: a name (not read) and an email that are not UTF-8
        let bytes = b"email,points,name\na@b.co,5,Jos\xe9\nc\xe9@d.co,7,x\ne@f.co,9,y\n";
        // WHEN it is read
        let file = super::read_balances(super::BalanceFormat::Smile, bytes).expect("read");
        // THEN the rows whose used cells are text read, and the one with such an email is
        // refused with what to do
        let read: Vec<bool> = file.rows.iter().map(|r| r.read.is_ok()).collect();
        assert_eq!(read, [true, false, true]);
        let reason = file.rows[1].read.as_ref().unwrap_err();
        assert!(reason.contains("email cell is not UTF-8"), "{reason}");
    }

    use super::*;

    #[test]
    fn rows_are_numbered_by_their_line_whatever_the_line_endings() {
        // GIVEN one file saved with LF, with CRLF, and with a BOM and CRLF (Excel on Windows),
        // its second row quoted over two lines
        let lf = "member,points\nm-1,10\n\"m-2\",\"2\n0\"\nm-3,30\n";
        let crlf = lf.replace('\n', "\r\n");
        let bom = format!("\u{feff}{crlf}");
        for file in [lf.to_string(), crlf, bom] {
            // WHEN it is read
            let read = read_balances(BalanceFormat::Csv, file.as_bytes()).unwrap();
            // THEN each row has the line it starts on, the header being line 1 (before: CRLF
            // rows one too low, the first named as the header's line)
            let lines: Vec<u64> = read.rows.iter().map(|r| r.line).collect();
            assert_eq!(lines, [2, 3, 5], "{file:?}");
        }
    }

    #[test]
    fn a_birthday_with_its_year_must_be_a_date_of_that_year() {
        // GIVEN 29 February of a leap year and of another
        let file = "member,points,birthday\nm-1,1,1992-02-29\nm-2,1,1990-02-29\nm-3,1,02-29\n";
        // WHEN read THEN the leap year's is kept, the other's refused (before: kept as 02-29)
        let read = read_balances(BalanceFormat::Csv, file.as_bytes()).unwrap();
        assert_eq!(
            read.rows[0]
                .read
                .as_ref()
                .unwrap()
                .balance
                .birthday
                .as_deref(),
            Some("02-29")
        );
        assert!(read.rows[1]
            .read
            .as_ref()
            .unwrap_err()
            .contains("not a date"));
        assert!(read.rows[2].read.is_ok());
    }

    #[test]
    fn a_cell_an_earlier_error_file_wrote_in_place_of_bytes_it_could_not_read_is_refused() {
        // GIVEN a row whose email holds U+FFFD, as an error file wrote a Latin-1 byte
        let file = "email,points\nlat2@x\u{fffd}.com,100\n";
        // WHEN read THEN the row is refused as not UTF-8 text (before: a member of that name)
        let read = read_balances(BalanceFormat::Smile, file.as_bytes()).unwrap();
        assert!(read.rows[0]
            .read
            .as_ref()
            .unwrap_err()
            .contains("not UTF-8"));
    }

    #[test]
    fn a_smile_file_reads_emails_and_points_and_refuses_bad_rows() {
        // GIVEN a Smile.io export with a bad email, separators in points and an empty cell
        let file = "email,points\nAnn@Example.com,1200\nnot-an-email,5\nbo@example.com,\"52,620\"\ncy@example.com,\n";
        // WHEN it is read
        let read = read_balances(BalanceFormat::Smile, file.as_bytes()).unwrap();
        // THEN the good row is lower-cased with its points, each bad one has its reason
        assert_eq!(read.rows.len(), 4);
        let first = read.rows[0].read.as_ref().unwrap();
        assert_eq!(first.email.as_deref(), Some("ann@example.com"));
        assert_eq!(first.balance.points, Some(1200));
        assert_eq!(read.rows[0].line, 2);
        assert!(read.rows[1]
            .read
            .as_ref()
            .unwrap_err()
            .contains("not an email"));
        assert!(read.rows[2].read.as_ref().unwrap_err().contains("52,620"));
        assert!(read.rows[3].read.as_ref().unwrap_err().contains("empty"));
    }

    #[test]
    fn a_file_with_a_byte_order_mark_before_a_quoted_header_finds_its_columns() {
        // GIVEN Excel's "CSV UTF-8": a byte order mark, then quoted titles
        let file = b"\xEF\xBB\xBF\"member\",\"email\",\"points\"\n\"m-1\",\"ann@x.co\",\"100\"\n";
        // WHEN it is read THEN the member column is found (the reader leaves the mark out):
        // the row is m-1's
        let read = read_balances(BalanceFormat::Csv, file).unwrap();
        let row = read.rows[0].read.as_ref().unwrap();
        assert_eq!(row.member.as_deref(), Some("m-1"));
        assert_eq!(row.balance.points, Some(100));
    }

    #[test]
    fn a_yotpo_file_reads_points_balance_and_birthday() {
        // GIVEN a Yotpo export with its own column titles
        let file = "First Name,Email,Points Balance,Points Spent,Birthday (MM/DD) or (MM/DD/YYYY)\nAnn,ann@example.com,300,40,03/07/1990\nBo,bo@example.com,,0,12/31\n";
        let read = read_balances(BalanceFormat::Yotpo, file.as_bytes()).unwrap();
        // THEN the balance and the birthday are read, and an empty balance states none
        let ann = read.rows[0].read.as_ref().unwrap();
        assert_eq!(ann.balance.points, Some(300));
        assert_eq!(ann.balance.birthday.as_deref(), Some("03-07"));
        let bo = read.rows[1].read.as_ref().unwrap();
        assert_eq!(
            (bo.balance.points, bo.balance.birthday.as_deref()),
            (None, Some("12-31"))
        );
    }

    #[test]
    fn our_csv_reads_member_tier_and_expiry_and_a_missing_column_stops_the_file() {
        let file =
            "member,email,points,tier,birthday,expires_on\nm-1,,500,GOLD,1992-02-29,2027-06-30\n";
        let read = read_balances(BalanceFormat::Csv, file.as_bytes()).unwrap();
        let m = read.rows[0].read.as_ref().unwrap();
        assert_eq!(m.member.as_deref(), Some("m-1"));
        assert_eq!(m.balance.tier.as_deref(), Some("GOLD"));
        assert!(read.rows[0].read.is_ok());
        assert_eq!(
            m.balance.expires_on,
            chrono::NaiveDate::from_ymd_opt(2027, 6, 30)
        );
        // AND a Smile file without a points column is refused whole
        let e = read_balances(BalanceFormat::Smile, b"email,balance\na@b.co,1\n").unwrap_err();
        assert!(e.0.contains("points"));
        // AND the digest depends on the bytes
        assert_ne!(
            read.digest,
            read_balances(BalanceFormat::Csv, b"member,points\nm-1,1\n")
                .unwrap()
                .digest
        );
    }
}

/// An order of Shopify's order export (one row per line item; the order's own columns are on
/// its first row), as the event its `orders/paid` webhook produces, or why it is not imported.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportedOrder {
    /// The line of the order's first row.
    pub line: u64,
    pub name: String,
    pub read: Result<crate::webhooks::PlatformEvent, String>,
}

/// Reads Shopify's order export (Orders > Export, CSV for Excel, numbers, or other
/// spreadsheet programs). Each paid order becomes the event `shopify-order-{Id}-paid` that its
/// webhook produces, credited to the member of its email; an order that was refunded or
/// cancelled is refused (the export names no refund lines: `loyalty reconcile` reads those from
/// the API), as is an unpaid one.
pub fn read_shopify_orders(
    bytes: &[u8],
    currency: crate::domain::Currency,
) -> Result<Vec<ExportedOrder>, FileError> {
    let mut reader = reader(bytes);
    let header: Vec<String> = reader
        .byte_headers()
        .map_err(|e| FileError(format!("the header cannot be read: {e}")))?
        .iter()
        .map(|h| normalise(&String::from_utf8_lossy(h)))
        .collect();
    let column = |name: &str| header.iter().position(|h| h == name);
    let need = |name: &str| {
        column(name).ok_or_else(|| {
            FileError(format!(
                "the file has no {name:?} column: is it Shopify's order export?"
            ))
        })
    };
    let columns = ExportColumns {
        name: need("name")?,
        id: need("id")?,
        email: need("email")?,
        financial: need("financial status")?,
        paid_at: need("paid at")?,
        currency: need("currency")?,
        shipping: column("shipping"),
        taxes: column("taxes"),
        cancelled_at: column("cancelled at"),
        refunded: column("refunded amount"),
        quantity: need("lineitem quantity")?,
        price: need("lineitem price")?,
        sku: column("lineitem sku"),
        discount: column("lineitem discount"),
    };
    let mut orders: Vec<ExportRows> = Vec::new();
    // Read as bytes: a cell that is not UTF-8 (the export saved again as CP949 or
    // Windows-1252) refuses its order when the order needs it, never the whole file.
    let mut lines = Lines::of(bytes);
    for record in reader.byte_records() {
        let record = record.map_err(|e| FileError(format!("the file is not CSV: {e}")))?;
        let line = lines.at(&record);
        let cells: Vec<String> = record
            .iter()
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect();
        let not_text = columns
            .used()
            .find(|&i| record.get(i).is_some_and(not_utf8));
        let not_text = not_text.map(|i| {
            format!(
                "line {line}: the {:?} cell is not UTF-8 text: save the file as CSV UTF-8 and import it again",
                header.get(i).map_or("", String::as_str)
            )
        });
        let name = cells.get(columns.name).cloned().unwrap_or_default();
        match orders.last_mut() {
            Some(last) if last.name == name => {
                last.rows.push(cells);
                last.not_text = last.not_text.take().or(not_text);
            }
            _ => orders.push(ExportRows {
                line,
                name,
                rows: vec![cells],
                not_text,
            }),
        }
    }
    Ok(orders
        .into_iter()
        .map(|order| ExportedOrder {
            line: order.line,
            read: match order.not_text {
                Some(reason) => Err(reason),
                None => exported_order(&columns, &order.rows, currency),
            },
            name: order.name,
        })
        .collect())
}

/// The rows of one order of the export, as read.
struct ExportRows {
    line: u64,
    name: String,
    rows: Vec<Vec<String>>,
    /// Why a cell the order reads cannot be, if one cannot.
    not_text: Option<String>,
}

struct ExportColumns {
    name: usize,
    id: usize,
    email: usize,
    financial: usize,
    paid_at: usize,
    currency: usize,
    shipping: Option<usize>,
    taxes: Option<usize>,
    cancelled_at: Option<usize>,
    refunded: Option<usize>,
    quantity: usize,
    price: usize,
    sku: Option<usize>,
    discount: Option<usize>,
}

impl ExportColumns {
    /// The columns an order is read from.
    fn used(&self) -> impl Iterator<Item = usize> {
        [
            Some(self.name),
            Some(self.id),
            Some(self.email),
            Some(self.financial),
            Some(self.paid_at),
            Some(self.currency),
            self.shipping,
            self.taxes,
            self.cancelled_at,
            self.refunded,
            Some(self.quantity),
            Some(self.price),
            self.sku,
            self.discount,
        ]
        .into_iter()
        .flatten()
    }
}

/// An amount of the export (`29000.00`) in the program's currency's minor units.
fn export_amount(currency: crate::domain::Currency, text: &str, what: &str) -> Result<i64, String> {
    let text = if text.is_empty() { "0" } else { text };
    currency
        .parse_amount(text)
        .or_else(|e| {
            // A currency without minor units is still written with ".00".
            match text.split_once('.') {
                Some((whole, cents)) if cents.bytes().all(|b| b == b'0') => {
                    currency.parse_amount(whole)
                }
                _ => Err(e),
            }
        })
        .map_err(|e| format!("{what} {text:?}: {e}"))
}

fn exported_order(
    c: &ExportColumns,
    rows: &[Vec<String>],
    currency: crate::domain::Currency,
) -> Result<crate::webhooks::PlatformEvent, String> {
    use serde_json::json;
    let first = &rows[0];
    let get = |row: &Vec<String>, at: Option<usize>| {
        at.and_then(|i| row.get(i)).cloned().unwrap_or_default()
    };
    let order_id = get(first, Some(c.id));
    crate::ids::IdKind::Order
        .check(&order_id)
        .map_err(|e| format!("Id: {e}"))?;
    let status = get(first, Some(c.financial));
    if !get(first, c.cancelled_at).is_empty() {
        return Err("the order was cancelled".into());
    }
    let refunded = export_amount(currency, &get(first, c.refunded), "Refunded Amount")?;
    if refunded > 0 || status.contains("refunded") {
        return Err("the order was refunded: its refunds name no lines here; run `loyalty reconcile --platform shopify`".into());
    }
    if status != "paid" {
        return Err(format!("the order is {status:?}, not paid"));
    }
    let code = get(first, Some(c.currency));
    if code != currency.to_string() {
        return Err(format!("the order is in {code}, the program in {currency}"));
    }
    let email = match get(first, Some(c.email)).as_str() {
        "" => {
            return Err("the order has no email: a guest checkout has no member to credit".into())
        }
        e => email(e)?,
    };
    let paid_at =
        chrono::DateTime::parse_from_str(&get(first, Some(c.paid_at)), "%Y-%m-%d %H:%M:%S %z")
            .map_err(|_| {
                format!(
                    "Paid at {:?} is not a time (2026-11-28 14:03:11 +0900)",
                    get(first, Some(c.paid_at))
                )
            })?
            .with_timezone(&chrono::Utc);
    let mut lines = Vec::with_capacity(rows.len());
    for (i, row) in rows.iter().enumerate() {
        let quantity: i64 = get(row, Some(c.quantity))
            .parse()
            .map_err(|_| format!("row {}: Lineitem quantity is not a number", i + 1))?;
        let price = export_amount(currency, &get(row, Some(c.price)), "Lineitem price")?;
        let discount = export_amount(currency, &get(row, c.discount), "Lineitem discount")?;
        lines.push(json!({
            // The export names no line ids: the line's place in the order stands for it.
            "line_id": format!("export-{}", i + 1),
            "sku": get(row, c.sku),
            "quantity": quantity,
            "unit_price": currency.format_amount(price),
            "discount": currency.format_amount(discount),
        }));
    }
    let shipping = export_amount(currency, &get(first, c.shipping), "Shipping")?;
    let taxes = export_amount(currency, &get(first, c.taxes), "Taxes")?;
    Ok(crate::webhooks::PlatformEvent {
        kind: "purchase.completed",
        id: format!("shopify-order-{order_id}-paid"),
        member: crate::webhooks::MemberRef::Identity(format!("email:{email}")),
        occurred_at: paid_at,
        data: json!({
            "order_id": order_id,
            "currency": code,
            "lines": lines,
            "shipping": currency.format_amount(shipping),
            "tax": currency.format_amount(taxes),
            "channel": "online",
            "platform": "shopify",
        }),
        order_key: Some(crate::envelope::order_key("shopify", &order_id)),
        identities: Vec::new(),
    })
}
