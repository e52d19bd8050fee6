//! Finance's reports: the points liability and its movement, from the program's books.

use chrono::NaiveDate;

use super::{ServiceError, Services};
use crate::domain::calendar::local_date;
use crate::liability::{self, LiabilityReport};

impl Services {
    /// The liability report as of the end of `as_of` (today, in the program's time zone, when
    /// absent). A date after today is refused: the books cannot know it yet.
    pub async fn liability(
        &self,
        program: &str,
        as_of: Option<NaiveDate>,
    ) -> Result<LiabilityReport, ServiceError> {
        let program = self.program(program).await?;
        let today = local_date(program.time_zone, self.clock.now());
        let as_of = as_of.unwrap_or(today);
        if as_of > today {
            return Err(ServiceError::invalid(
                "invalid-date",
                format!(
                    "as_of {as_of} is after today ({today} in {})",
                    program.time_zone
                ),
            ));
        }
        let rows = self.store.book_rows(&program.id, as_of).await?;
        Ok(liability::report(&program, &rows, as_of))
    }
}
