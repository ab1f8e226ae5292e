//! `skiff describe`: a Deployment, Service or pod in kubectl's words, with a
//! Deployment's revisions and events.

use super::*;

/// `skiff describe KIND NAME` (or KIND/NAME).
pub(crate) async fn describe(client: &Client, args: &[String]) -> anyhow::Result<()> {
    let targets = targets(args)?;
    let f = fetch(client, &targets, None).await?;
    let mut first = true;
    for d in &f.deployments {
        if !std::mem::take(&mut first) {
            println!();
        }
        let h: RolloutHistory = client
            .get_json(&format!("/v1/deployments/{}/history", d.metadata.name))
            .await?;
        describe_deployment(d, &h);
    }
    for s in &f.services {
        if !std::mem::take(&mut first) {
            println!();
        }
        println!("Name:              {}", s.metadata.name);
        println!("Namespace:         default");
        println!("Labels:            {}", labels_text(&s.metadata.labels));
        println!(
            "Annotations:       {}",
            labels_text(&s.metadata.annotations)
        );
        println!("Selector:          {}", labels_text(&s.spec.selector));
        println!(
            "Type:              {}",
            s.spec.kind.as_deref().unwrap_or("ClusterIP")
        );
        println!(
            "Load balancer:     {}",
            s.metadata
                .annotations
                .get("skiff.dev/load-balancer")
                .map_or("p2c-ewma", |b| b.as_str())
        );
        for p in &s.spec.ports {
            println!(
                "Port:              {} {}/TCP",
                p.name.as_deref().unwrap_or("<unset>"),
                p.port
            );
            if let Some(np) = p.node_port {
                println!("NodePort:          {np}/TCP");
            }
        }
        let pods: List<k8s::Pod> = client
            .get_json(&format!(
                "{PODS}{}",
                query(Some(&labels_text(&s.spec.selector)))
            ))
            .await?;
        let endpoints: Vec<&str> = pods
            .items
            .iter()
            .filter(|p| p.status.container_statuses.iter().all(|c| c.ready))
            .map(|p| p.metadata.name.as_str())
            .collect();
        println!(
            "Endpoints:         {}",
            if endpoints.is_empty() {
                "<none>".to_string()
            } else {
                endpoints.join(",")
            }
        );
    }
    for p in &f.pods {
        if !std::mem::take(&mut first) {
            println!();
        }
        println!("Name:         {}", p.metadata.name);
        println!("Namespace:    default");
        println!(
            "Node:         {}",
            p.spec.node_name.as_deref().unwrap_or("<none>")
        );
        println!(
            "Start Time:   {}",
            p.status.start_time.as_deref().unwrap_or("<none>")
        );
        println!("Labels:       {}", labels_text(&p.metadata.labels));
        println!("Status:       {}", pod_status(p));
        println!(
            "IP:           {}",
            p.status.pod_ip.as_deref().unwrap_or("<none>")
        );
        for c in &p.status.container_statuses {
            println!("Container {}:", c.name);
            println!("  Image:          {}", c.image);
            println!("  Image ID:       {}", c.image_id);
            println!("  Ready:          {}", c.ready);
            println!("  Restart Count:  {}", c.restart_count);
            if let Some(w) = &c.state.waiting {
                println!(
                    "  State:          Waiting ({}): {}",
                    w.reason.as_deref().unwrap_or(""),
                    w.message.as_deref().unwrap_or("")
                );
            }
        }
    }
    Ok(())
}

fn describe_deployment(d: &k8s::Deployment, h: &RolloutHistory) {
    let s = d.status.clone().unwrap_or_default();
    let desired = d.spec.replicas.unwrap_or(1);
    println!("Name:                   {}", d.metadata.name);
    println!("Namespace:              default");
    println!(
        "CreationTimestamp:      {}",
        d.metadata.creation_timestamp.as_deref().unwrap_or("")
    );
    println!(
        "Labels:                 {}",
        labels_text(&d.metadata.labels)
    );
    println!(
        "Annotations:            {}",
        labels_text(&d.metadata.annotations)
    );
    println!(
        "Selector:               {}",
        labels_text(&d.spec.selector.match_labels)
    );
    println!(
        "Replicas:               {desired} desired | {} updated | {} total | {} available | {} unavailable",
        s.updated_replicas,
        s.replicas,
        s.available_replicas,
        (s.replicas - s.available_replicas).max(0)
    );
    let strategy = d.spec.strategy.clone().unwrap_or_default();
    let kind = strategy.kind.as_deref().unwrap_or("RollingUpdate");
    println!("StrategyType:           {kind}");
    println!(
        "MinReadySeconds:        {}",
        d.spec.min_ready_seconds.unwrap_or(0)
    );
    if kind == "RollingUpdate" {
        let ru = strategy.rolling_update.unwrap_or_default();
        let show = |v: Option<k8s::IntOrString>| match v {
            Some(k8s::IntOrString::Int(i)) => i.to_string(),
            Some(k8s::IntOrString::String(s)) => s,
            None => "25%".into(),
        };
        println!(
            "RollingUpdateStrategy:  {} max unavailable, {} max surge",
            show(ru.max_unavailable),
            show(ru.max_surge)
        );
    }
    println!("Pod Template:");
    println!(
        "  Labels:  {}",
        labels_text(&d.spec.template.metadata.labels)
    );
    for c in &d.spec.template.spec.containers {
        println!("  Containers:");
        println!("   {}:", c.name);
        println!("    Image:      {}", c.image);
        for p in &c.ports {
            println!("    Port:       {}/TCP", p.container_port);
        }
        if let Some(r) = &c.resources {
            for (k, v) in &r.limits {
                println!(
                    "    Limits:     {k}: {}",
                    serde_json::to_value(v).map_or_else(
                        |_| String::new(),
                        |v| v.to_string().trim_matches('"').to_string()
                    )
                );
            }
        }
        for e in &c.env {
            println!("    Env:        {}={}", e.name, e.value);
        }
    }
    println!("Conditions:");
    let rows: Vec<[String; 3]> = s
        .conditions
        .iter()
        .map(|c| {
            [
                format!("  {}", c.kind),
                c.status.clone(),
                c.reason.clone().unwrap_or_default(),
            ]
        })
        .collect();
    print_table(&["  Type", "Status", "Reason"], &rows);
    println!("Revisions:");
    for r in &h.revisions {
        println!("  {}  {}  {}  {}", r.revision, r.hash, r.image, r.at);
    }
    println!("Events:");
    if h.events.is_empty() {
        println!("  <none>");
    } else {
        let rows: Vec<[String; 4]> = h
            .events
            .iter()
            .map(|e| {
                [
                    format!("  {}", e.kind),
                    e.reason.clone(),
                    age_of(Some(&e.at)),
                    e.message.clone(),
                ]
            })
            .collect();
        print_table(&["  Type", "Reason", "Age", "Message"], &rows);
    }
}
