//! A small chat app on kiln, to copy from: one database per room (named by a UUID, its title
//! in the room's metadata), messages as typed documents whose ids sort by time, the latest
//! messages read with a cursor, a member count kept by compare-and-swap.
//!
//! ```sh
//! cargo run -q -p kiln --example chat -- DIR new "Lunch plans"        # prints the room id
//! cargo run -q -p kiln --example chat -- DIR say ROOM alice "Pizza?"
//! cargo run -q -p kiln --example chat -- DIR join ROOM bob
//! cargo run -q -p kiln --example chat -- DIR read ROOM [N]            # the latest N (20)
//! cargo run -q -p kiln --example chat -- DIR rooms
//! cargo run -q -p kiln --example chat -- DIR demo                     # all of the above
//! ```

use kiln::{Database, Error, ListOptions, Store};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Debug)]
struct Message {
    /// `msg/<ms since the epoch, 16 digits>-<author>`: ids in time order, so the latest
    /// messages are the last ids under the `msg/` prefix.
    #[serde(rename = "_id")]
    id: String,
    author: String,
    text: String,
}

#[derive(Serialize, Deserialize, Debug, Default)]
struct Members {
    #[serde(rename = "_id")]
    id: String,
    names: Vec<String>,
}

fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

/// A new room: its own database, its title in the database's metadata.
fn new_room(store: &Store, title: &str) -> kiln::Result<Database> {
    let room = store.create(None)?;
    room.update_meta(|m| {
        m.insert("title".into(), title.into());
    })?;
    Ok(room)
}

fn say(room: &Database, author: &str, text: &str) -> kiln::Result<()> {
    let id = format!("msg/{:016}-{author}", now_ms());
    room.put(&Message {
        id,
        author: author.into(),
        text: text.into(),
    })?;
    Ok(())
}

/// Adds a member: read, change, write only if nobody changed the list meanwhile (else again).
fn join(room: &Database, name: &str) -> kiln::Result<usize> {
    loop {
        let (mut members, rev) = match room.get_with_rev("members")? {
            Some((doc, rev)) => (serde_json::from_value::<Members>(doc)?, Some(rev)),
            None => (
                Members {
                    id: "members".into(),
                    ..Members::default()
                },
                None,
            ),
        };
        if !members.names.iter().any(|n| n == name) {
            members.names.push(name.into());
        }
        match room.put_if(&members, rev.as_ref()) {
            Ok(_) => return Ok(members.names.len()),
            Err(Error::Conflict(_)) => continue, // someone else joined first: read again
            Err(e) => return Err(e),
        }
    }
}

/// The latest `n` messages, oldest first: a cursor backwards from the end of the room.
fn latest(room: &Database, n: usize) -> kiln::Result<Vec<Message>> {
    let opts = ListOptions::default().prefix("msg/").desc().limit(n);
    let mut msgs: Vec<Message> = room.cursor_as(&opts)?.collect::<kiln::Result<_>>()?;
    msgs.reverse();
    Ok(msgs)
}

fn print_room(room: &Database, n: usize) -> kiln::Result<()> {
    let title = room.meta()?.get("title").cloned().unwrap_or_default();
    println!(
        "# {} ({})",
        title.as_str().unwrap_or("untitled"),
        room.name()
    );
    for m in latest(room, n)? {
        println!("{:>8}: {}", m.author, m.text);
    }
    Ok(())
}

fn main() -> kiln::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: chat DIR (new TITLE | say ROOM AUTHOR TEXT | join ROOM NAME | read ROOM [N] | rooms | demo)";
    let (Some(dir), Some(cmd)) = (args.first(), args.get(1)) else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let store = Store::open(dir)?;
    let arg = |i: usize| -> &str {
        args.get(i).map(String::as_str).unwrap_or_else(|| {
            eprintln!("{usage}");
            std::process::exit(2)
        })
    };
    match cmd.as_str() {
        "new" => println!("{}", new_room(&store, arg(2))?.name()),
        "say" => say(&store.open_db(arg(2))?, arg(3), arg(4))?,
        "join" => println!("{} members", join(&store.open_db(arg(2))?, arg(3))?),
        "read" => {
            let n = args.get(3).and_then(|n| n.parse().ok()).unwrap_or(20);
            print_room(&store.open_db(arg(2))?, n)?
        }
        "rooms" => {
            for name in store.list()? {
                let title = store.open_db(&name)?.meta()?.get("title").cloned();
                println!("{name}  {}", title.unwrap_or_default());
            }
        }
        "demo" => {
            let room = new_room(&store, "Lunch plans")?;
            for (who, text) in [("alice", "Pizza?"), ("bob", "Sushi!"), ("alice", "Both.")] {
                join(&room, who)?;
                say(&room, who, text)?;
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            print_room(&room, 2)?;
            assert_eq!(join(&room, "carol")?, 3);
            assert!(room.verify()?.ok());
        }
        _ => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    }
    Ok(())
}
