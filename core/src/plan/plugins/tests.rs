use super::*;
use crate::plan::testing::{Fate, Tree, GREETER};
use crate::plan::Request;

fn add(text: &str, replace: bool) -> PluginAdd {
    PluginAdd::new("zk", "greeter.toml", text, replace).expect("a valid manifest")
}

fn remove(name: &str, force: bool) -> PluginRemove {
    let name = PluginName::new(name).expect("a valid name");
    PluginRemove::new("zk", &name, force).expect("not a built-in")
}

fn namespace_before_plugins() -> Tree {
    Tree::with(&[
        ("/pop", "{\"layout\":1}"),
        ("/machines", ""),
        ("/services", ""),
        ("/agents", ""),
    ])
}

/// The greeter stored, and services `a` (a greeter), `b` (echo) and `c` (unreadable).
fn in_use() -> Tree {
    let mut tree = Tree::with_greeter();
    for (path, data) in [
        ("/services/a", ""),
        ("/services/a/settings", "{\"type\":\"greeter\"}"),
        ("/services/b", ""),
        ("/services/b/settings", "{\"type\":\"echo\",\"port\":0}"),
        ("/services/c", ""),
        ("/services/c/settings", "{oops"),
    ] {
        tree.set(path, data);
    }
    tree
}

#[test]
fn plugin_add_stores_the_text_as_given_creating_plugins_in_an_older_namespace() {
    let mut tree = namespace_before_plugins();
    let outcome = tree.run(&mut add(GREETER, false));
    assert_eq!(
        outcome.map(|o| o.to_string()),
        Ok("added plugin greeter".into())
    );
    assert_eq!(tree.data("/plugins"), Some(""));
    assert_eq!(tree.data("/plugins/greeter"), Some(GREETER));
    assert_eq!(tree.writes.len(), 1, "one multi: {:?}", tree.writes);
}

#[test]
fn plugin_add_of_the_same_text_again_is_nothing_to_do() {
    let mut tree = Tree::with_greeter();
    let outcome = tree.run(&mut add(GREETER, false));
    assert_eq!(
        outcome.map(|o| o.to_string()),
        Ok("nothing to do: plugin greeter is stored as given already".into())
    );
    assert!(tree.writes.is_empty());
}

#[test]
fn plugin_add_refuses_another_manifest_of_the_name_unless_replacing() {
    let changed = GREETER.replace("hello", "howdy");
    let mut tree = Tree::with_greeter();
    let outcome = tree.run(&mut add(&changed, false));
    assert_eq!(
        outcome,
        Err(PlanError::PluginExists {
            name: "greeter".into()
        })
    );
    assert!(tree.writes.is_empty());
    assert_eq!(tree.data("/plugins/greeter"), Some(GREETER));

    let outcome = tree.run(&mut add(&changed, true));
    assert_eq!(
        outcome.map(|o| o.to_string()),
        Ok("replaced plugin greeter".into())
    );
    assert_eq!(tree.data("/plugins/greeter"), Some(changed.as_str()));
}

#[test]
fn plugin_add_replacing_retries_when_another_writer_changed_it_meanwhile() {
    let mut tree = Tree::with_greeter();
    let mut raced = false;
    let changed = GREETER.replace("hello", "howdy");
    let outcome = tree.run_with(&mut add(&changed, true), |tree, request| {
        if matches!(request, Request::Write(_)) && !raced {
            raced = true;
            tree.set("/plugins/greeter", "name = \"greeter\"");
        }
        Fate::Deliver
    });
    assert!(
        matches!(outcome, Ok(Outcome::PluginAdded { replaced: true, .. })),
        "{outcome:?}"
    );
    assert_eq!(tree.data("/plugins/greeter"), Some(changed.as_str()));
}

#[test]
fn plugin_add_whose_reply_was_lost_reports_added() {
    let mut tree = Tree::with_greeter();
    tree.nodes.remove("/plugins/greeter");
    let mut lost = false;
    let outcome = tree.run_with(&mut add(GREETER, false), |_, request| {
        if matches!(request, Request::Write(_)) && !lost {
            lost = true;
            return Fate::LoseReply;
        }
        Fate::Deliver
    });
    assert_eq!(
        outcome,
        Ok(Outcome::PluginAdded {
            name: "greeter".into(),
            replaced: false
        })
    );
    assert_eq!(tree.writes.len(), 1);
}

#[test]
fn plugin_add_refuses_a_bad_manifest_naming_line_and_field_before_reading() {
    let bad = GREETER.replace("{port}", "{prot}");
    let refused = PluginAdd::new("zk", "greeter.toml", &bad, false).err();
    assert_eq!(
        refused.map(|e| e.to_string()),
        Some("greeter.toml line 8: run.command: unknown placeholder {prot}; settings are greeting, port".into())
    );
}

#[test]
fn plugin_add_refuses_a_builtin_name() {
    let echo = GREETER.replace("name = \"greeter\"", "name = \"echo\"");
    let refused = PluginAdd::new("zk", "echo.toml", &echo, true).err();
    assert_eq!(
        refused.map(|e| e.to_string()),
        Some("\"echo\" is a type built into pop; give the plugin another name".into())
    );
}

#[test]
fn plugin_add_without_a_namespace_says_to_run_init() {
    let mut tree = Tree::with(&[]);
    let outcome = tree.run(&mut add(GREETER, false));
    assert_eq!(
        outcome,
        Err(PlanError::NamespaceMissing { at: "zk".into() })
    );
    assert!(tree.writes.is_empty());
}

#[test]
fn plugin_remove_is_refused_while_services_are_of_its_type_naming_them() {
    let mut tree = in_use();
    let outcome = tree.run(&mut remove("greeter", false));
    assert_eq!(
        outcome.map_err(|e| e.to_string()),
        Err("plugin greeter is the type of service a; remove them first or use `pop plugin remove greeter --force`".into())
    );
    assert!(tree.writes.is_empty());
}

#[test]
fn plugin_remove_force_removes_it_and_names_the_services_still_of_its_type() {
    let mut tree = in_use();
    let outcome = tree.run(&mut remove("greeter", true));
    assert_eq!(
        outcome.map(|o| o.to_string()),
        Ok("removed plugin greeter; services still of its type: a".into())
    );
    assert_eq!(tree.data("/plugins/greeter"), None);
    assert_eq!(tree.data("/plugins"), Some(""));
}

#[test]
fn plugin_remove_of_an_unused_plugin_removes_it() {
    let mut tree = Tree::with_greeter();
    let outcome = tree.run(&mut remove("greeter", false));
    assert_eq!(
        outcome.map(|o| o.to_string()),
        Ok("removed plugin greeter".into())
    );
    assert_eq!(
        tree.writes,
        ["delete /plugins/greeter v0"],
        "by the version it checked"
    );
}

#[test]
fn plugin_remove_looks_again_when_the_plugin_changed_meanwhile() {
    let mut tree = Tree::with_greeter();
    let mut raced = false;
    let outcome = tree.run_with(&mut remove("greeter", false), |tree, request| {
        if matches!(request, Request::Write(_)) && !raced {
            raced = true;
            tree.set("/plugins/greeter", GREETER);
            tree.set("/services/a", "");
            tree.set("/services/a/settings", "{\"type\":\"greeter\"}");
        }
        Fate::Deliver
    });
    assert!(
        matches!(outcome, Err(PlanError::PluginInUse { .. })),
        "{outcome:?}"
    );
    assert_eq!(tree.data("/plugins/greeter"), Some(GREETER));
}

#[test]
fn plugin_remove_whose_reply_was_lost_reports_removed() {
    let mut tree = Tree::with_greeter();
    let outcome = tree.run_with(&mut remove("greeter", false), |_, request| {
        if matches!(request, Request::Write(_)) {
            return Fate::LoseReply;
        }
        Fate::Deliver
    });
    assert!(
        matches!(outcome, Ok(Outcome::PluginRemoved { .. })),
        "{outcome:?}"
    );
}

#[test]
fn plugin_remove_of_a_missing_plugin_or_a_builtin_is_refused() {
    let mut tree = Tree::with_greeter();
    let outcome = tree.run(&mut remove("nope", false));
    assert_eq!(
        outcome.map_err(|e| e.to_string()),
        Err("no plugin named \"nope\" (see `pop plugin list`)".into())
    );
    let name = PluginName::new("command").expect("a valid name");
    assert_eq!(
        PluginRemove::new("zk", &name, true)
            .err()
            .map(|e| e.to_string()),
        Some("\"command\" is built into pop and cannot be removed".into())
    );
}
