//! The JSON text of an aggregate's results when no step follows it. Its
//! members are known when the pipeline compiles (the key, the window's
//! columns, the aggregate's fields), so their names are sorted, escaped
//! and joined once, and each result writes only the bytes before each
//! value and the value.

use weir_crds::expr::write_json_string;

use crate::engine::pipeline::WindowOp;
use crate::engine::window::WindowAssigner;

/// The columns of a time or session window in a result, in the order the
/// window's values are given.
pub const TIME_WINDOW_COLUMNS: [&str; 2] = ["window_start", "window_end"];

/// The column of a count window in a result: its sequence number.
pub const COUNT_WINDOW_COLUMNS: [&str; 1] = ["window_seq"];

/// The columns of the results of an aggregate over `window` (none for a
/// running aggregate).
pub fn columns(window: Option<&WindowOp>) -> &'static [&'static str] {
    match window.map(|op| &op.assigner) {
        None => &[],
        Some(WindowAssigner::Count { .. }) => &COUNT_WINDOW_COLUMNS,
        Some(_) => &TIME_WINDOW_COLUMNS,
    }
}

/// What a member of a result holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Member {
    /// The key (a keyBy's key as text, else null).
    Key,
    /// The window column at this index among [`columns`].
    Column(usize),
    /// The aggregate field at this index.
    Field(usize),
}

/// The layout of an aggregate's result text: its members in name order,
/// as a JSON object's keys are written, each with the bytes before its
/// value (`{"name":` for the first, `,"name":` for the others).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResultText {
    members: Vec<(Vec<u8>, Member)>,
}

impl ResultText {
    /// The layout of results with the window `columns` and the fields
    /// named `fields` (names distinct from each other and from `key`, as
    /// validation makes them).
    pub fn new<'n>(columns: &[&'n str], fields: impl IntoIterator<Item = &'n str>) -> ResultText {
        let mut members = vec![("key", Member::Key)];
        members.extend(
            columns
                .iter()
                .enumerate()
                .map(|(i, n)| (*n, Member::Column(i))),
        );
        members.extend(
            fields
                .into_iter()
                .enumerate()
                .map(|(i, n)| (n, Member::Field(i))),
        );
        members.sort_by(|a, b| a.0.cmp(b.0));
        let members = members
            .into_iter()
            .enumerate()
            .map(|(i, (name, member))| {
                let mut before = vec![if i == 0 { b'{' } else { b',' }];
                // Writing JSON into a vector cannot fail.
                let _ = write_json_string(name, &mut before);
                before.push(b':');
                (before, member)
            })
            .collect();
        ResultText { members }
    }

    /// The members in order, each with the bytes before its value.
    pub fn members(&self) -> impl Iterator<Item = (&[u8], Member)> {
        self.members
            .iter()
            .map(|(before, m)| (before.as_slice(), *m))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_are_in_name_order_with_their_escaped_names() {
        let text = ResultText::new(&TIME_WINDOW_COLUMNS, ["n", "a\"b"]);
        let members: Vec<(String, Member)> = text
            .members()
            .map(|(before, m)| (String::from_utf8(before.to_vec()).unwrap(), m))
            .collect();
        assert_eq!(
            members,
            vec![
                ("{\"a\\\"b\":".to_owned(), Member::Field(1)),
                (",\"key\":".to_owned(), Member::Key),
                (",\"n\":".to_owned(), Member::Field(0)),
                (",\"window_end\":".to_owned(), Member::Column(1)),
                (",\"window_start\":".to_owned(), Member::Column(0)),
            ]
        );
    }
}
