#!/usr/bin/env python3
"""What the lake tests ask of the tools' Python (`scripts/services python`):

  lake.py s3-bucket ENDPOINT NAME          create an S3 bucket (moto)
  lake.py az-container NAME                create an Azurite container
  lake.py duckdb ENDPOINT SQL              run SQL in DuckDB with httpfs loaded
                                           offline and an S3 secret for ENDPOINT;
                                           prints the rows as JSON
  lake.py pyarrow DIR                      read DIR as a pyarrow dataset (Hive
                                           partitions, hidden names skipped as
                                           every lake reader does); prints
                                           {"rows", "files", "columns"} as JSON
"""
import json
import os
import sys


def s3_bucket(endpoint, name):
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    try:
        s3.create_bucket(Bucket=name)
    except s3.exceptions.BucketAlreadyOwnedByYou:
        pass


def az_container(name):
    from azure.storage.blob import BlobServiceClient
    from azure.core.exceptions import ResourceExistsError

    client = BlobServiceClient.from_connection_string("UseDevelopmentStorage=true")
    try:
        client.create_container(name)
    except ResourceExistsError:
        pass


def duckdb_query(endpoint, sql):
    import duckdb
    import duckdb_ext

    ext = os.path.join(list(duckdb_ext.__path__)[0], "extensions")
    con = duckdb.connect()
    con.execute(f"SET extension_directory='{ext}'")
    con.execute("SET autoinstall_known_extensions=false")
    con.execute("SET autoload_known_extensions=false")
    con.execute("LOAD httpfs")
    host = endpoint.split("://", 1)[-1].rstrip("/")
    con.execute(f"""CREATE SECRET lake (TYPE s3, KEY_ID 'testing', SECRET 'testing',
        REGION 'us-east-1', ENDPOINT '{host}', URL_STYLE 'path', USE_SSL false)""")
    cur = con.execute(sql)
    cols = [d[0] for d in cur.description]
    rows = [dict(zip(cols, r)) for r in cur.fetchall()]
    print(json.dumps(rows, default=str))


def pyarrow_read(path):
    import pyarrow.dataset as ds

    fmt = "parquet" if any(
        f.endswith(".parquet") for _, _, fs in os.walk(path) for f in fs
    ) else "json"
    data = ds.dataset(path, format=fmt, partitioning="hive")
    table = data.to_table()
    print(json.dumps({
        "rows": table.num_rows,
        "files": sorted(os.path.relpath(f, path) for f in data.files),
        "columns": {f.name: str(f.type) for f in table.schema},
    }))


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "s3-bucket":
        s3_bucket(*args)
    elif cmd == "az-container":
        az_container(*args)
    elif cmd == "duckdb":
        duckdb_query(*args)
    elif cmd == "pyarrow":
        pyarrow_read(*args)
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
