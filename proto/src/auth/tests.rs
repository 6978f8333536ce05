use super::*;

fn perm(key: &str, end: &[u8], t: i32) -> Perm {
    Perm {
        key: key.as_bytes().to_vec(),
        range_end: end.to_vec(),
        perm_type: t,
    }
}

fn ok(p: &[Perm], key: &str, end: &[u8], a: Access) -> bool {
    permitted(p.iter(), key.as_bytes(), end, a)
}

#[test]
fn one_key_and_intervals() {
    let p = [perm("a", b"", READ), perm("k", b"m", READWRITE)];
    assert!(ok(&p, "a", b"", Access::Read));
    assert!(!ok(&p, "a", b"", Access::Write));
    assert!(
        !ok(&p, "a0", b"", Access::Read),
        "a point permission is one key"
    );
    assert!(ok(&p, "k", b"", Access::Write));
    assert!(permitted(p.iter(), b"l\xff", b"", Access::Write));
    assert!(!ok(&p, "m", b"", Access::Read), "range_end is exclusive");
    assert!(ok(&p, "k", b"m", Access::Read));
    assert!(ok(&p, "kk", b"l", Access::Read));
    assert!(!ok(&p, "k", b"n", Access::Read));
    assert!(!ok(&p, "j", b"l", Access::Read));
    assert!(
        !ok(&p, "k", &[0], Access::Read),
        "open-ended needs an open-ended grant"
    );
    // The single key a: the interval [a, a\0) is covered by the point grant.
    assert!(ok(&p, "a", b"a\0", Access::Read));
    assert!(!ok(&p, "a", b"a\0\0", Access::Read));
}

#[test]
fn union_covers_across_adjacent_grants_but_not_gaps() {
    let p = [
        perm("a", b"c", READ),
        perm("c", b"e", READWRITE),
        perm("f", &[0], READ),
    ];
    assert!(ok(&p, "a", b"e", Access::Read));
    assert!(!ok(&p, "a", b"e", Access::Write));
    assert!(!ok(&p, "a", b"f", Access::Read), "gap [e, f)");
    assert!(ok(&p, "f", &[0], Access::Read));
    assert!(ok(&p, "zzz", b"", Access::Read));
    let all = [perm("\0", &[0], READWRITE)];
    assert!(ok(&all, "\0", &[0], Access::Write));
    assert!(ok(&all, "x", b"", Access::Write));
    assert!(!ok(&[], "x", b"", Access::Read));
}

#[test]
fn permission_ranges_are_checked() {
    assert!(valid_permission_range(b"a", b""));
    assert!(valid_permission_range(b"a", b"b"));
    assert!(valid_permission_range(b"a", &[0]));
    assert!(!valid_permission_range(b"", b""));
    assert!(!valid_permission_range(b"b", b"a"));
    assert!(!valid_permission_range(b"b", b"b"));
}

fn root_state() -> AuthState {
    let mut s = AuthState::default();
    let add = |s: &mut AuthState, c| s.apply(&c, None).unwrap();
    add(
        &mut s,
        AuthCommand::UserAdd {
            name: ROOT.into(),
            password: Some("h".into()),
        },
    );
    add(&mut s, AuthCommand::RoleAdd { name: ROOT.into() });
    add(
        &mut s,
        AuthCommand::UserGrantRole {
            user: ROOT.into(),
            role: ROOT.into(),
        },
    );
    s
}

#[test]
fn enable_needs_root_with_its_role() {
    let mut s = AuthState::default();
    let enable = AuthCommand::Enable { secret: vec![1] };
    assert_eq!(s.apply(&enable, None), Err(AuthError::RootUserNotExist));
    s.apply(
        &AuthCommand::UserAdd {
            name: ROOT.into(),
            password: None,
        },
        None,
    )
    .unwrap();
    assert_eq!(s.apply(&enable, None), Err(AuthError::RootRoleNotExist));
    let mut s = root_state();
    let rev = s.revision;
    s.apply(&enable, None).unwrap();
    assert!(s.enabled);
    assert_eq!(s.revision, rev + 1);
    assert_eq!(s.secret, vec![1]);
}

#[test]
fn enabled_changes_need_root_and_protect_root() {
    let mut s = root_state();
    s.apply(&AuthCommand::Enable { secret: vec![1] }, None)
        .unwrap();
    let add = AuthCommand::UserAdd {
        name: "alice".into(),
        password: Some("h".into()),
    };
    assert_eq!(s.apply(&add, None), Err(AuthError::UserEmpty));
    assert_eq!(s.apply(&add, Some("bob")), Err(AuthError::UserNotFound));
    s.apply(&add, Some(ROOT)).unwrap();
    assert_eq!(
        s.apply(&add, Some("alice")),
        Err(AuthError::PermissionDenied)
    );
    assert_eq!(s.apply(&add, Some(ROOT)), Err(AuthError::UserAlreadyExist));
    for cmd in [
        AuthCommand::UserDelete { name: ROOT.into() },
        AuthCommand::RoleDelete { name: ROOT.into() },
        AuthCommand::UserRevokeRole {
            name: ROOT.into(),
            role: ROOT.into(),
        },
    ] {
        assert_eq!(
            s.apply(&cmd, Some(ROOT)),
            Err(AuthError::InvalidAuthMgmt),
            "{cmd:?}"
        );
    }
    let rev = s.revision;
    assert!(s.apply(&AuthCommand::Disable, Some("alice")).is_err());
    assert_eq!(
        s.revision, rev,
        "a refused change leaves the revision alone"
    );
    s.apply(&AuthCommand::Disable, Some(ROOT)).unwrap();
    assert!(!s.enabled);
    s.apply(&AuthCommand::UserDelete { name: ROOT.into() }, None)
        .unwrap();
}

#[test]
fn roles_grants_and_checks() {
    let mut s = root_state();
    let c = |s: &mut AuthState, cmd| s.apply(&cmd, None);
    c(
        &mut s,
        AuthCommand::UserAdd {
            name: "u".into(),
            password: Some("h".into()),
        },
    )
    .unwrap();
    assert_eq!(
        c(
            &mut s,
            AuthCommand::UserGrantRole {
                user: "u".into(),
                role: "r".into()
            }
        ),
        Err(AuthError::RoleNotFound)
    );
    c(&mut s, AuthCommand::RoleAdd { name: "r".into() }).unwrap();
    assert_eq!(
        c(&mut s, AuthCommand::RoleAdd { name: "r".into() }),
        Err(AuthError::RoleAlreadyExist)
    );
    assert_eq!(
        c(&mut s, AuthCommand::RoleAdd { name: "".into() }),
        Err(AuthError::RoleEmpty)
    );
    c(
        &mut s,
        AuthCommand::UserGrantRole {
            user: "u".into(),
            role: "r".into(),
        },
    )
    .unwrap();
    let grant = |p| AuthCommand::RoleGrantPermission {
        name: "r".into(),
        perm: p,
    };
    assert_eq!(c(&mut s, grant(None)), Err(AuthError::PermissionNotGiven));
    assert_eq!(
        c(&mut s, grant(Some(perm("b", b"a", READ)))),
        Err(AuthError::InvalidAuthMgmt)
    );
    c(&mut s, grant(Some(perm("k", b"m", READ)))).unwrap();
    // Granting the same range again updates its type.
    c(&mut s, grant(Some(perm("k", b"m", READWRITE)))).unwrap();
    c(&mut s, grant(Some(perm("a", b"", WRITE)))).unwrap();
    assert_eq!(s.roles["r"].perms.len(), 2);
    assert_eq!(s.roles["r"].perms[0].key, b"a");
    // Checks count only while enabled.
    assert!(s.check("u", b"z", b"", Access::Read).is_ok());
    c(&mut s, AuthCommand::Enable { secret: vec![2] }).unwrap();
    assert!(s.check("u", b"kz", b"", Access::Write).is_ok());
    assert_eq!(
        s.check("u", b"z", b"", Access::Read),
        Err(AuthError::PermissionDenied)
    );
    assert_eq!(
        s.check("nobody", b"k", b"", Access::Read),
        Err(AuthError::PermissionDenied)
    );
    assert!(s.check(ROOT, b"z", &[0], Access::Write).is_ok());
    let revoke = |k: &str, e: &[u8]| AuthCommand::RoleRevokePermission {
        role: "r".into(),
        key: k.into(),
        range_end: e.to_vec(),
    };
    let r = s.apply(&revoke("k", b"m"), Some(ROOT));
    assert_eq!(r, Ok(()));
    assert_eq!(
        s.apply(&revoke("k", b"m"), Some(ROOT)),
        Err(AuthError::PermissionNotGranted)
    );
    assert_eq!(
        s.check("u", b"k", b"", Access::Read),
        Err(AuthError::PermissionDenied)
    );
    // Deleting a role takes it from every user.
    s.apply(&AuthCommand::RoleDelete { name: "r".into() }, Some(ROOT))
        .unwrap();
    assert!(s.users["u"].roles.is_empty());
    assert_eq!(
        s.apply(
            &AuthCommand::UserRevokeRole {
                name: "u".into(),
                role: "r".into()
            },
            Some(ROOT)
        ),
        Err(AuthError::RoleNotGranted)
    );
    assert_eq!(s.role_perms(ROOT).unwrap(), vec![]);
    assert_eq!(s.role_perms("r"), Err(AuthError::RoleNotFound));
}

#[test]
fn password_change_bumps_the_generation() {
    let mut s = root_state();
    let g = s.users[ROOT].generation;
    s.apply(
        &AuthCommand::UserChangePassword {
            name: ROOT.into(),
            password: Some("h2".into()),
        },
        None,
    )
    .unwrap();
    assert_eq!(s.users[ROOT].generation, g + 1);
    assert_eq!(s.users[ROOT].password.as_deref(), Some("h2"));
    let json = serde_json::to_vec(&s).unwrap();
    assert_eq!(serde_json::from_slice::<AuthState>(&json).unwrap(), s);
}
