"""The review and appeal desk: a web console where moderators work the review queue and decide
incidents and appeals (decisions to Kafka), and where streamers open their signed appeal links."""
